//! Bearer-token authentication for every kiroku service (gRPC and HTTP). The principal of every
//! command comes from here, never from the request body.
//!
//! Tokens are configured as `token=principal[:role+role]` pairs (comma separated, in
//! `KIROKU_TOKENS`) or as lines `TOKEN PRINCIPAL [ROLE,ROLE]` in a file (`KIROKU_TOKENS_FILE`).
//! There is no built-in token. Only `kiroku dev` may run [`Auth::Open`], and only on loopback.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// In open (dev) mode, a client may name the principal it acts as with this header.
pub const PRINCIPAL_HEADER: &str = "x-kiroku-principal";
const MIN_TOKEN_CHARS: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub principal: String,
    pub roles: Vec<String>,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

#[derive(Clone)]
pub enum Auth {
    /// Development only: no credentials; the principal is `dev` unless the request names one in
    /// [`PRINCIPAL_HEADER`].
    Open,
    Tokens(Arc<HashMap<String, Identity>>),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthConfigError {
    #[error(
        "no credentials configured: set KIROKU_TOKENS or KIROKU_TOKENS_FILE (only `kiroku dev` runs without)"
    )]
    Missing,
    #[error("token entry {entry}: {reason}")]
    Invalid { entry: usize, reason: String },
    #[error("cannot read tokens file {path}: {reason}")]
    Unreadable { path: String, reason: String },
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-@".contains(c))
}

impl Auth {
    /// Parses `token=principal[:role+role],...`.
    pub fn from_spec(spec: &str) -> Result<Self, AuthConfigError> {
        let entries = spec
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let (token, rest) = e.split_once('=').unwrap_or((e, ""));
                let (principal, roles) = rest.split_once(':').unwrap_or((rest, ""));
                (
                    token.to_owned(),
                    principal.to_owned(),
                    roles.split('+').map(str::to_owned).collect(),
                )
            });
        Self::from_entries(entries)
    }

    /// Reads a tokens file: `TOKEN PRINCIPAL [ROLE,ROLE]` per line, `#` comments.
    pub fn from_file(path: &std::path::Path) -> Result<Self, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthConfigError::Unreadable {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(|l| {
                let mut words = l.split_whitespace();
                let token = words.next().unwrap_or_default().to_owned();
                let principal = words.next().unwrap_or_default().to_owned();
                let roles = words
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(str::to_owned)
                    .collect();
                (token, principal, roles)
            });
        Self::from_entries(entries)
    }

    fn from_entries(
        entries: impl Iterator<Item = (String, String, Vec<String>)>,
    ) -> Result<Self, AuthConfigError> {
        let mut tokens = HashMap::new();
        for (i, (token, principal, roles)) in entries.enumerate() {
            let invalid = |reason: &str| AuthConfigError::Invalid {
                entry: i + 1,
                reason: reason.into(),
            };
            if token.chars().count() < MIN_TOKEN_CHARS
                || token.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(invalid(
                    "a token needs at least 16 characters and no whitespace",
                ));
            }
            if !valid_name(&principal) {
                return Err(invalid(
                    "a principal is 1-128 characters of letters, digits and . _ - @",
                ));
            }
            let roles: Vec<String> = roles.into_iter().filter(|r| !r.is_empty()).collect();
            if roles.iter().any(|r| !valid_name(r)) {
                return Err(invalid(
                    "a role is 1-128 characters of letters, digits and . _ - @",
                ));
            }
            if tokens
                .insert(token, Identity { principal, roles })
                .is_some()
            {
                return Err(invalid("the same token appears twice"));
            }
        }
        if tokens.is_empty() {
            return Err(AuthConfigError::Missing);
        }
        Ok(Auth::Tokens(Arc::new(tokens)))
    }

    pub fn is_open(&self) -> bool {
        matches!(self, Auth::Open)
    }

    pub fn authenticate(&self, metadata: &MetadataMap) -> Result<Identity, Status> {
        match self {
            Auth::Open => {
                let principal = match metadata.get(PRINCIPAL_HEADER) {
                    None => "dev".to_owned(),
                    Some(v) => v
                        .to_str()
                        .ok()
                        .filter(|p| valid_name(p))
                        .ok_or_else(|| {
                            Status::invalid_argument(format!(
                                "{PRINCIPAL_HEADER} is not a valid principal name"
                            ))
                        })?
                        .to_owned(),
                };
                Ok(Identity {
                    principal,
                    roles: vec!["admin".into()],
                })
            }
            Auth::Tokens(tokens) => {
                let header = metadata.get("authorization").ok_or_else(|| {
                    Status::unauthenticated(
                        "missing credentials: send `authorization: Bearer <token>`",
                    )
                })?;
                let token = header
                    .to_str()
                    .ok()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .ok_or_else(|| {
                        Status::unauthenticated(
                            "malformed authorization header: expected `Bearer <token>`",
                        )
                    })?;
                tokens
                    .get(token.trim())
                    .cloned()
                    .ok_or_else(|| Status::unauthenticated("unknown or revoked token"))
            }
        }
    }

    /// A tonic interceptor that authenticates and stores the [`Identity`] in the request.
    pub fn interceptor(
        &self,
    ) -> impl FnMut(Request<()>) -> Result<Request<()>, Status> + Clone + Send + Sync + 'static
    {
        let auth = self.clone();
        move |mut request: Request<()>| {
            let identity = auth.authenticate(request.metadata())?;
            request.extensions_mut().insert(identity);
            Ok(request)
        }
    }
}

/// The identity the interceptor established for this request.
pub fn identity<T>(request: &Request<T>) -> Result<Identity, Status> {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .ok_or_else(|| Status::internal("request reached a service without passing authentication"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(pairs: &[(&'static str, &str)]) -> MetadataMap {
        let mut m = MetadataMap::new();
        for (k, v) in pairs {
            m.insert(*k, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn tokens_authenticate_their_principal_and_nothing_else() {
        let auth =
            Auth::from_spec("s3cret-token-0001=ann:admin+ops, s3cret-token-0002=bob").unwrap();
        let ann = auth
            .authenticate(&metadata(&[("authorization", "Bearer s3cret-token-0001")]))
            .unwrap();
        assert_eq!(
            ann,
            Identity {
                principal: "ann".into(),
                roles: vec!["admin".into(), "ops".into()]
            }
        );
        assert!(
            !auth
                .authenticate(&metadata(&[("authorization", "Bearer s3cret-token-0002")]))
                .unwrap()
                .has_role("admin")
        );
        for bad in [
            vec![],
            vec![("authorization", "Bearer nope")],
            vec![("authorization", "Basic abc")],
        ] {
            let err = auth.authenticate(&metadata(&bad)).unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{bad:?}");
        }
        // The dev header means nothing when tokens are configured.
        let err = auth
            .authenticate(&metadata(&[(PRINCIPAL_HEADER, "ann")]))
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }

    #[test]
    fn bad_token_configuration_is_refused() {
        assert_eq!(Auth::from_spec("").err(), Some(AuthConfigError::Missing));
        assert!(matches!(
            Auth::from_spec("short=ann"),
            Err(AuthConfigError::Invalid { entry: 1, .. })
        ));
        assert!(matches!(
            Auth::from_spec("long-enough-token=bad name"),
            Err(AuthConfigError::Invalid { .. })
        ));
        assert!(matches!(
            Auth::from_spec("long-enough-token=a,long-enough-token=b"),
            Err(AuthConfigError::Invalid { entry: 2, .. })
        ));
    }

    #[test]
    fn tokens_file_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(
            &path,
            "# ops\nlong-enough-token-1 ann admin\n\nlong-enough-token-2 bob\n",
        )
        .unwrap();
        let auth = Auth::from_file(&path).unwrap();
        let bob = auth
            .authenticate(&metadata(&[(
                "authorization",
                "Bearer long-enough-token-2",
            )]))
            .unwrap();
        assert_eq!(bob.principal, "bob");
        assert!(matches!(
            Auth::from_file(&dir.path().join("missing")),
            Err(AuthConfigError::Unreadable { .. })
        ));
    }

    #[test]
    fn open_mode_takes_the_dev_header() {
        assert_eq!(
            Auth::Open
                .authenticate(&MetadataMap::new())
                .unwrap()
                .principal,
            "dev"
        );
        assert_eq!(
            Auth::Open
                .authenticate(&metadata(&[(PRINCIPAL_HEADER, "cy")]))
                .unwrap()
                .principal,
            "cy"
        );
        assert!(
            Auth::Open
                .authenticate(&metadata(&[(PRINCIPAL_HEADER, "c y")]))
                .is_err()
        );
    }
}
