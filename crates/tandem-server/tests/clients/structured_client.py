"""Structured output and tool calls through the official `openai` Python client:
`chat.completions.parse(response_format=PydanticModel)` and a forced tool call, streamed and not.
Prints one JSON object for tests/structured.rs. Usage: structured_client.py BASE_URL MODEL"""

import json
import sys

from openai import OpenAI
from pydantic import BaseModel, Field

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
out = {}


class Pet(BaseModel):
    name: str = Field(max_length=8)
    age: int = Field(ge=0, le=30)
    kind: str = Field(pattern="^(cat|dog|bird)$")


messages = [{"role": "user", "content": "Tell me about a pet."}]
r = client.chat.completions.parse(model=model, messages=messages, response_format=Pet, max_tokens=120, temperature=0)
choice = r.choices[0]
out["parse_finish"] = choice.finish_reason
out["parsed"] = choice.message.parsed.model_dump() if choice.message.parsed else None

tools = [
    {"type": "function", "function": {"name": "get_weather",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 10}},
            "required": ["city"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {"zone": {"enum": ["UTC", "CET"]}},
            "required": ["zone"], "additionalProperties": False}}},
]
messages = [{"role": "user", "content": "What is the weather in Paris?"}]
r = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="required", parallel_tool_calls=False, temperature=0)
c = r.choices[0]
out["call_finish"] = c.finish_reason
out["calls"] = [{"id": t.id, "type": t.type, "name": t.function.name, "arguments": json.loads(t.function.arguments)} for t in c.message.tool_calls or []]
out["call_class"] = type(c.message.tool_calls[0]).__name__ if c.message.tool_calls else None

stream = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="required", parallel_tool_calls=False, temperature=0, stream=True)
calls, finish = {}, None
for chunk in stream:
    if not chunk.choices:
        continue
    d = chunk.choices[0].delta
    for t in d.tool_calls or []:
        e = calls.setdefault(t.index, {"name": "", "arguments": ""})
        if t.function.name:
            e["name"] += t.function.name
        if t.function.arguments:
            e["arguments"] += t.function.arguments
    finish = chunk.choices[0].finish_reason or finish
out["stream_finish"] = finish
out["stream_calls"] = [{"name": e["name"], "arguments": json.loads(e["arguments"])} for _, e in sorted(calls.items())]

# The conversation goes on: the call and its result render through the template.
messages = messages + [c.message.model_dump(exclude_none=True), {"role": "tool", "tool_call_id": c.message.tool_calls[0].id, "content": "sunny"}]
r = client.chat.completions.create(model=model, messages=messages, tools=tools, tool_choice="none", max_tokens=8, temperature=0)
out["after_tool_finish"] = r.choices[0].finish_reason
print(json.dumps(out))
