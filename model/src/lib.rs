//! What every weft stage shares: the log record and its Arrow schemas, the
//! collector → indexer wire codec, label sets, and time parsing.

/// Instantiates a SIMD search macro of [`fold`] twice: 16
/// positions at a time with SSE2 (part of x86-64) as `$sse2`, and 32 at a
/// time with AVX2 as `$avx2` (called only where the CPU has it).
macro_rules! sse2_and_avx2 {
    ($search:ident, $sse2:ident, $avx2:ident) => {
        $search!(
            /// 16 positions at a time (SSE2, part of x86-64).
            $sse2, 16, __m128i, _mm_setzero_si128, _mm_set1_epi8, _mm_loadu_si128, _mm_or_si128, _mm_and_si128, _mm_cmpeq_epi8, _mm_movemask_epi8
        );
        $search!(
            /// 32 positions at a time; the CPU has AVX2.
            #[target_feature(enable = "avx2")]
            $avx2, 32, __m256i, _mm256_setzero_si256, _mm256_set1_epi8, _mm256_loadu_si256, _mm256_or_si256, _mm256_and_si256, _mm256_cmpeq_epi8, _mm256_movemask_epi8
        );
    };
}

pub mod batch;
pub mod events;
pub mod fold;
mod ipc_stream;
pub mod labels;
pub mod level;
pub mod metric;
pub mod record;
pub mod scan;
pub mod source_batch;
pub mod time;
pub mod tls;

pub use batch::{LogBatchBuilder, LogBatchView, RecordRef};
pub use labels::LabelSet;
pub use record::{Level, LogRecord};

/// Errors of the shared model: malformed input in one of its formats.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid timestamp {text:?}: {reason}")]
    InvalidTimestamp { text: String, reason: &'static str },
    #[error("invalid duration {text:?}: {reason}")]
    InvalidDuration { text: String, reason: &'static str },
    #[error("invalid label set {text:?} at byte {at}: {reason}")]
    InvalidLabels { text: String, at: usize, reason: &'static str },
    #[error("invalid label name {0:?}: must match [a-zA-Z_][a-zA-Z0-9_]*")]
    InvalidLabelName(String),
    #[error("arrow ipc: {0}")]
    Ipc(String),
    #[error("schema mismatch: {0}")]
    Schema(String),
    #[error("too large: {0}")]
    TooLarge(String),
}
