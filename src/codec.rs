//! The gRPC codec every generated Switchyard client and server uses: prost
//! encoding, with smaller per-stream buffers than tonic's default.
//!
//! tonic gives every stream an 8 KiB encode buffer and an 8 KiB decode
//! buffer. A control plane holds one agent stream per node, most of whose
//! messages are a few dozen bytes, so those buffers were the largest part
//! of its memory per agent. Buffers still grow to fit a larger message
//! (a snapshot), a step at a time.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::BufferSettings;
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Initial size of a stream's encode and decode buffers.
pub const BUFFER_SIZE: usize = 256;

/// Encoded bytes gathered before a stream hands them to the transport (as
/// tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with [`BUFFER_SIZE`] buffers; named by the generated code.
#[derive(Debug)]
pub struct Codec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::new(settings())
    }
}
