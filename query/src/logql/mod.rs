//! LogQL: the syntax tree, the parser, the per-line pipeline and the
//! evaluation engine.

pub mod ast;
pub mod eval;
pub mod parser;
pub mod pipeline;

#[cfg(test)]
mod tests;
