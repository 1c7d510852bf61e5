//! The gRPC codec every kiroku service uses: prost, with the error codes a client can act on.
//!
//! tonic's stock codec answers INTERNAL for a request that is not valid protobuf and OUT_OF_RANGE
//! for one over its size limit. Both are the client's fault, so kiroku answers INVALID_ARGUMENT
//! and RESOURCE_EXHAUSTED instead, with the limit in the message.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::ProstCodec;

/// The largest request message accepted, in bytes. Larger ones get RESOURCE_EXHAUSTED.
pub const MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// The transport-level cap handed to tonic (`max_decoding_message_size`). It sits above
/// [`MAX_REQUEST_BYTES`] so that this codec, not tonic, judges oversized requests.
pub const TRANSPORT_MAX_BYTES: usize = 4 * MAX_REQUEST_BYTES;

#[derive(Debug, Clone)]
pub struct KirokuCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for KirokuCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for KirokuCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = KirokuDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        KirokuDecoder(PhantomData)
    }
}

#[derive(Debug)]
pub struct KirokuDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for KirokuDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf;
        let len = buf.remaining();
        if len > MAX_REQUEST_BYTES {
            return Err(Status::resource_exhausted(format!(
                "message of {len} bytes exceeds the limit of {MAX_REQUEST_BYTES} bytes"
            )));
        }
        U::decode(buf)
            .map(Some)
            .map_err(|e| Status::invalid_argument(format!("malformed protobuf message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
