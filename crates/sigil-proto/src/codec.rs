//! The codec of the Workload API and Envoy SDS services: prost, with buffers
//! sized to the message.
//!
//! tonic's default codec gives every response stream an 8 KiB encode buffer
//! that lives as long as the stream. An agent keeps a Workload API stream
//! open per workload, so with 1,000 workloads that was 8 MB of mostly unused
//! buffers (heaptrack, benches/README.md). This encoder starts small and
//! reserves exactly what each message needs.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic_prost::ProstDecoder;

/// Initial encode and decode buffer: enough for the 5-byte gRPC header and
/// the small requests of these services; bigger messages reserve their size.
const INITIAL_BUFFER: usize = 256;
/// tonic's default: how much an encoder may buffer before yielding.
const YIELD_THRESHOLD: usize = 32 * 1024;

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}

/// A prost [`Codec`] with small, exactly grown buffers.
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = LeanEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> LeanEncoder<T> {
        LeanEncoder(PhantomData)
    }

    fn decoder(&mut self) -> ProstDecoder<U> {
        // prost's decoder with a small initial buffer (it grows to each message).
        ProstDecoder::new(settings())
    }
}

/// Encodes a prost message into a buffer reserved to its encoded length.
#[derive(Debug, Clone)]
pub struct LeanEncoder<T>(PhantomData<T>);

impl<T: prost::Message> Encoder for LeanEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding a response: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
