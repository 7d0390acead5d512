"""Drives a tandem server with the official `openai` Python client: completions and chat,
streamed and not, greedy. Prints one JSON object with the texts, for tests/clients.rs to compare
with tandem's own generation. Usage: openai_client.py BASE_URL MODEL"""

import json
import sys

from openai import OpenAI

base, model = sys.argv[1], sys.argv[2]
client = OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=120)
out = {"models": [m.id for m in client.models.list()]}

c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=40, temperature=0)
out["completion"] = c.choices[0].text
out["completion_usage"] = c.usage.completion_tokens
stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=40, temperature=0, stream=True)
out["completion_stream"] = "".join(chunk.choices[0].text for chunk in stream if chunk.choices)

messages = [{"role": "user", "content": "Tell me a story about a dog."}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=50, temperature=0)
out["chat"] = r.choices[0].message.content
out["chat_finish"] = r.choices[0].finish_reason
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=50, temperature=0, stream=True, stream_options={"include_usage": True}
)
parts, usage = [], None
for chunk in stream:
    if chunk.choices and chunk.choices[0].delta.content:
        parts.append(chunk.choices[0].delta.content)
    if chunk.usage:
        usage = chunk.usage.completion_tokens
out["chat_stream"] = "".join(parts)
out["chat_stream_usage"] = usage
print(json.dumps(out))
