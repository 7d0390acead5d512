"""Drives a tandem server with the official `openai` Python client: completions and chat,
streamed and not, greedy, with and without logprobs. Prints one JSON object with the texts and
the logprobs as the client parsed them, for tests/clients.rs to compare with tandem's own
generation. Usage: openai_client.py BASE_URL MODEL"""

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


def completion_logprobs(lp):
    return {"tokens": lp.tokens, "token_logprobs": lp.token_logprobs, "top_logprobs": lp.top_logprobs, "text_offset": lp.text_offset}


def chat_logprobs(content):
    return [
        {"token": e.token, "logprob": e.logprob, "bytes": e.bytes, "top": [[t.token, t.logprob] for t in e.top_logprobs]}
        for e in content
    ]


# Logprobs, parsed into the client's own types, streamed and not.
c = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, logprobs=2)
out["completion_logprobs"] = completion_logprobs(c.choices[0].logprobs)
out["completion_logprobs_text"] = c.choices[0].text
joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
stream = client.completions.create(model=model, prompt="Once upon a time", max_tokens=12, temperature=0, logprobs=2, stream=True)
for chunk in stream:
    if chunk.choices and chunk.choices[0].logprobs:
        for key, values in completion_logprobs(chunk.choices[0].logprobs).items():
            joined[key] += values
out["completion_logprobs_stream"] = joined

r = client.chat.completions.create(model=model, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3)
out["chat_logprobs"] = chat_logprobs(r.choices[0].logprobs.content)
out["chat_logprobs_usage"] = r.usage.completion_tokens
entries = []
stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=12, temperature=0, logprobs=True, top_logprobs=3, stream=True
)
for chunk in stream:
    if chunk.choices and chunk.choices[0].logprobs and chunk.choices[0].logprobs.content:
        entries += chat_logprobs(chunk.choices[0].logprobs.content)
out["chat_logprobs_stream"] = entries
print(json.dumps(out))
