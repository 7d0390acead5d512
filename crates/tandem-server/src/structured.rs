//! Structured output and tool calls on the OpenAI API: the request fields are read by
//! [`tandem_core::tools::request`] (shared with the browser engine); here their errors become
//! 400s.

pub use tandem_core::tools::request::{openai_tool_calls, Fields, Structured};
use tandem_core::tools::ToolChoice;

use crate::errors::ApiError;

/// [`Fields::resolve`], its refusal a 400 naming the problem.
pub fn resolve(
    fields: &Fields,
    template: Option<&str>,
) -> Result<(Structured, ToolChoice), ApiError> {
    fields.resolve(template).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// A message's OpenAI `tool_calls` in the form templates read, or a 400.
pub fn template_tool_calls(
    i: usize,
    calls: &[serde_json::Value],
) -> Result<serde_json::Value, ApiError> {
    tandem_core::tools::request::template_tool_calls(i, calls)
        .map_err(|e| ApiError::bad_request(e.to_string()))
}
