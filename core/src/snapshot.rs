use serde::Serialize;
use serde::de::DeserializeOwned;

/// A snapshot could not be read back. Snapshots are a derivable cache: the caller discards it and
/// replays the aggregate from its events, the user never sees this.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotDecodeError {
    #[error("snapshot has format {found}, this build reads format {expected}")]
    WrongFormat { expected: u16, found: u16 },
    #[error("snapshot is truncated")]
    Truncated,
    #[error("snapshot body does not decode: {0}")]
    Body(String),
}

/// Turns aggregate state into snapshot bytes and back. Kept behind a trait so the encoding can be
/// replaced (bincode, named by the design card, is unmaintained: RUSTSEC-2025-0141).
pub trait SnapshotCodec: Send + Sync + 'static {
    fn encode<S: Serialize>(&self, state: &S) -> Vec<u8>;
    fn decode<S: DeserializeOwned>(&self, bytes: &[u8]) -> Result<S, SnapshotDecodeError>;
}

/// bincode (serde, standard configuration) behind a two-byte little-endian format header.
///
/// Bump [`BincodeSnapshotCodec::FORMAT`] whenever a state type changes shape: old snapshots then
/// fail the header check and the aggregate is rebuilt from events instead of being misread.
#[derive(Debug, Clone, Copy, Default)]
pub struct BincodeSnapshotCodec {
    /// Per-aggregate state version, mixed into the header so that each aggregate type can evolve
    /// independently.
    pub state_version: u8,
}

impl BincodeSnapshotCodec {
    pub const FORMAT: u8 = 1;

    fn header(&self) -> u16 {
        u16::from_le_bytes([Self::FORMAT, self.state_version])
    }
}

impl SnapshotCodec for BincodeSnapshotCodec {
    fn encode<S: Serialize>(&self, state: &S) -> Vec<u8> {
        let mut out = self.header().to_le_bytes().to_vec();
        // Serializing plain in-memory state cannot fail for the types kiroku aggregates use
        // (no maps with non-string keys restrictions apply to bincode).
        bincode::serde::encode_into_std_write(state, &mut out, bincode::config::standard())
            .expect("bincode serialization of aggregate state into a Vec cannot fail");
        out
    }

    fn decode<S: DeserializeOwned>(&self, bytes: &[u8]) -> Result<S, SnapshotDecodeError> {
        let (head, body) = bytes
            .split_at_checked(2)
            .ok_or(SnapshotDecodeError::Truncated)?;
        let found = u16::from_le_bytes([head[0], head[1]]);
        if found != self.header() {
            return Err(SnapshotDecodeError::WrongFormat {
                expected: self.header(),
                found,
            });
        }
        let (state, read) = bincode::serde::decode_from_slice(body, bincode::config::standard())
            .map_err(|e| SnapshotDecodeError::Body(e.to_string()))?;
        if read != body.len() {
            return Err(SnapshotDecodeError::Body(format!(
                "{} trailing bytes after the state",
                body.len() - read
            )));
        }
        Ok(state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct State {
        name: String,
        members: Vec<String>,
    }

    #[test]
    fn round_trips_and_rejects_foreign_or_damaged_bytes() {
        let codec = BincodeSnapshotCodec { state_version: 3 };
        let state = State {
            name: "lobby".into(),
            members: vec!["ann".into()],
        };
        let bytes = codec.encode(&state);
        assert_eq!(codec.decode::<State>(&bytes).unwrap(), state);

        let newer = BincodeSnapshotCodec { state_version: 4 };
        assert!(matches!(
            newer.decode::<State>(&bytes),
            Err(SnapshotDecodeError::WrongFormat { .. })
        ));
        assert_eq!(
            codec.decode::<State>(&bytes[..1]),
            Err(SnapshotDecodeError::Truncated)
        );
        assert!(matches!(
            codec.decode::<State>(&bytes[..bytes.len() - 1]),
            Err(SnapshotDecodeError::Body(_))
        ));
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            codec.decode::<State>(&longer),
            Err(SnapshotDecodeError::Body(_))
        ));
    }
}
