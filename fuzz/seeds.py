#!/usr/bin/env python3
"""Seed inputs for the fuzz targets.

    python3 fuzz/seeds.py small             # the small seeds kept in fuzz/seeds/ (rewrites them)
    python3 fuzz/seeds.py shared [MODELS]   # bigger ones from the real models, into fuzz/corpus/

`small` writes tiny, valid files of every kind the targets read (a Llama GGUF with every tensor
type tandem loads, safetensors, configs, chat templates, request bodies), deterministically.
`shared` reads ../shared/models (or MODELS) and tandem's default model in ~/.cache/tandem: the
stories260K checkpoint and config, and SmolLM2's GGUF metadata (its tokenizer and chat template,
without the 98 MB of weights). Those are too big for the repository; fuzz/campaign.sh calls this.
"""

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

# ---- GGUF -------------------------------------------------------------------------------------

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)


def gguf_str(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def gguf_value(ty, v):
    if ty == STR:
        return gguf_str(v)
    if ty == ARR:
        elem, items = v
        return struct.pack("<IQ", elem, len(items)) + b"".join(gguf_value(elem, x) for x in items)
    fmt = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
           U64: "<Q", I64: "<q", F64: "<d"}[ty]
    return struct.pack(fmt, v)


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, dims (ggml order), ggml type, data bytes)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for k, ty, v in kvs:
        out += gguf_str(k) + struct.pack("<I", ty) + gguf_value(ty, v)
    offset = 0
    for name, dims, ty, data in tensors:
        out += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ty, offset)
        offset += (len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    for _, _, _, data in tensors:
        out += data + b"\0" * (-len(data) % alignment)
    return out


def f32s(n, seed=1):
    return b"".join(struct.pack("<f", ((i * 7919 + seed) % 97) / 48.0 - 1.0) for i in range(n))


def f16s(n, seed=1):
    return b"".join(struct.pack("<e", ((i * 7919 + seed) % 97) / 48.0 - 1.0) for i in range(n))


def bf16s(n, seed=1):
    return b"".join(f32s(n, seed)[4 * i + 2:4 * i + 4] for i in range(n))


def q8_0(blocks):
    return b"".join(struct.pack("<e", 0.01 * (b + 1)) + bytes((i * 37 + b) % 256 for i in range(32)) for b in range(blocks))


def q4_0(blocks):
    return b"".join(struct.pack("<e", 0.02 * (b + 1)) + bytes((i * 53 + b) % 256 for i in range(16)) for b in range(blocks))


def q4_1(blocks):
    return b"".join(struct.pack("<ee", 0.02 * (b + 1), -0.1) + bytes((i * 29 + b) % 256 for i in range(16)) for b in range(blocks))


def tiny_llama(arch="llama", tokenizer="llama", extra_kv=(), rope_freqs=False, alignment=32):
    """A 1-layer model (dim 32, 2 heads of 16, 1 KV head, FFN 32, vocab 32) with every tensor type."""
    dim, ffn, vocab, heads, kv_heads = 32, 32, 32, 2, 1
    kv = dim // heads * kv_heads
    kvs = [
        ("general.architecture", STR, arch),
        ("general.name", STR, "seed"),
        (f"{arch}.embedding_length", U32, dim),
        (f"{arch}.block_count", U32, 1),
        (f"{arch}.feed_forward_length", U32, ffn),
        (f"{arch}.attention.head_count", U32, heads),
        (f"{arch}.attention.head_count_kv", U32, kv_heads),
        (f"{arch}.context_length", U32, 128),
        (f"{arch}.rope.freq_base", F32, 10000.0),
        (f"{arch}.attention.layer_norm_rms_epsilon", F32, 1e-5),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
    ]
    if alignment != 32:
        kvs.append(("general.alignment", U32, alignment))
    if tokenizer == "llama":
        pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(8)] + ["▁", "a", "b", "c", "▁a", "ab", "▁ab", "▁the", "t", "h", "e", "th", "the", "▁t", "s", "▁s", "o", "n", "on", "▁on", "<|im_end|>"]
        types = [2, 3, 3] + [6] * 8 + [1] * 20 + [3]
        kvs += [("tokenizer.ggml.model", STR, "llama"),
                ("tokenizer.ggml.tokens", ARR, (STR, pieces[:vocab])),
                ("tokenizer.ggml.scores", ARR, (F32, [-float(i) for i in range(vocab)])),
                ("tokenizer.ggml.token_type", ARR, (I32, types[:vocab]))]
    else:
        pieces = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(ord("a"), ord("a") + 26)] + ["Ġ", "Ġa", "ab"]
        kvs += [("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, "smollm"),
                ("tokenizer.ggml.tokens", ARR, (STR, pieces[:vocab])),
                ("tokenizer.ggml.token_type", ARR, (I32, [3, 3, 3] + [1] * (vocab - 3))),
                ("tokenizer.ggml.merges", ARR, (STR, ["Ġ a", "a b"])),
                ("tokenizer.chat_template", STR, "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}")]
    kvs += list(extra_kv)
    n = dim * dim
    tensors = [
        ("token_embd.weight", [dim, vocab], 8, q8_0(dim * vocab // 32)),
        ("output_norm.weight", [dim], 0, f32s(dim)),
        ("blk.0.attn_norm.weight", [dim], 0, f32s(dim, 2)),
        ("blk.0.ffn_norm.weight", [dim], 30, bf16s(dim, 3)),
        ("blk.0.attn_q.weight", [dim, dim], 2, q4_0(n // 32)),
        ("blk.0.attn_k.weight", [dim, kv], 3, q4_1(dim * kv // 32)),
        ("blk.0.attn_v.weight", [dim, kv], 1, f16s(dim * kv)),
        ("blk.0.attn_output.weight", [dim, dim], 8, q8_0(n // 32)),
        ("blk.0.ffn_gate.weight", [dim, ffn], 2, q4_0(n // 32)),
        ("blk.0.ffn_up.weight", [dim, ffn], 3, q4_1(n // 32)),
        ("blk.0.ffn_down.weight", [ffn, dim], 0, f32s(n, 4)),
    ]
    if rope_freqs:
        tensors.append(("rope_freqs.weight", [8], 0, struct.pack("<8f", *([1.0] * 6 + [8.0, 8.0]))))
    return gguf(kvs, tensors, alignment=alignment)


# ---- safetensors ------------------------------------------------------------------------------

def safetensors(tensors, metadata=None):
    """tensors: [(name, dtype, shape, data)]."""
    header, offset, data = {}, 0, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, blob in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(blob)]}
        offset += len(blob)
        data += blob
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def tiny_safetensors():
    return safetensors([
        ("model.embed_tokens.weight", "F32", [8, 16], f32s(128)),
        ("model.layers.0.input_layernorm.weight", "F16", [16], f16s(16)),
        ("model.layers.0.self_attn.q_proj.weight", "BF16", [16, 16], bf16s(256)),
        ("model.layers.0.mlp.down_proj.weight", "F32", [32, 16], f32s(512, 5)),
        ("model.norm.weight", "F32", [16], f32s(16, 6)),
        ("scalar", "F32", [], f32s(1)),
        ("empty", "F16", [0, 4], b""),
    ], {"format": "pt"})


# ---- Text inputs ------------------------------------------------------------------------------

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
    "intermediate_size": 172, "num_hidden_layers": 5, "num_attention_heads": 8,
    "num_key_value_heads": 4, "head_dim": 8, "max_position_embeddings": 512, "rms_norm_eps": 1e-05,
    "rope_theta": 10000.0, "rope_scaling": None, "vocab_size": 512, "tie_word_embeddings": True,
    "bos_token_id": 1, "eos_token_id": 2, "attention_bias": False, "torch_dtype": "float32",
}

CONFIGS = {
    "llama.json": LLAMA_CONFIG,
    "llama3-scaling.json": dict(LLAMA_CONFIG, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                                head_dim=64, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
                                eos_token_id=[128001, 128008, 128009], bos_token_id=128000,
                                rope_scaling={"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}),
    "mistral-linear.json": dict(LLAMA_CONFIG, architectures=["MistralForCausalLM"], model_type="mistral",
                                rope_scaling={"type": "linear", "factor": 2.0}, head_dim=None),
    "qwen2.json": dict(LLAMA_CONFIG, architectures=["Qwen2ForCausalLM"], model_type="qwen2", rope_theta=1000000.0,
                       eos_token_id=None),
}

GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": [2, 3], "do_sample": True, "temperature": 0.6}

TEMPLATES = {
    "chatml": "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
    "llama2": "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}",
    "llama3": "{{- bos_token }}\n{%- if messages[0]['role'] == 'system' %}\n    {%- set system_message = messages[0]['content']|trim %}\n    {%- set messages = messages[1:] %}\n{%- else %}\n    {%- set system_message = \"\" %}\n{%- endif %}\n{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}\n{{- system_message }}\n{{- \"<|eot_id|>\" }}\n{%- for message in messages %}\n    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}\n{%- endfor %}\n{%- if add_generation_prompt %}\n    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}\n{%- endif %}\n",
    "zephyr": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}",
    "methods": "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{{ m.content.lstrip().rstrip('!').replace('a', 'b').upper() }}{{ m.role.split('a')|join(',') }}{% if m.content.startswith('x') or m.content.endswith('y') %}!{% endif %}{{ {'k': m.role}.items()|list|tojson(indent=2) }}{{ m.content|indent(2) }}{{ '%5d'|format(ns.n) }}{% endfor %}{{ {'a': 1}.get('b', 'none') }}{{ range(3)|list }}{{ messages|length }}",
    "macro": "{% macro turn(m) %}[{{ m['role'] }}] {{ m['content'] }}{% endmacro %}{% for m in messages %}{{ turn(m) }}{% if loop.index is divisibleby 2 %}\n{% endif %}{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
}

MESSAGES = [("system", "Be brief."), ("user", "What is the capital of France?"), ("assistant", "Paris."), ("user", "Ünïcödé 日本語 🦀?")]

REQUESTS = [
    (0, 0, {"messages": [{"role": "user", "content": "Hi!"}], "stream": True, "max_tokens": 8}),
    (0, 1, {"model": "m", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [{"type": "text", "text": "Hello"}]}],
            "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7, "n": 2, "stop": ["\n", "User:"],
            "logprobs": True, "top_logprobs": 3, "presence_penalty": 0.5, "frequency_penalty": -0.5, "repetition_penalty": 1.1,
            "stream_options": {"include_usage": True}, "max_completion_tokens": 16, "response_format": {"type": "text"}}),
    (1, 0, {"prompt": "Once upon a time", "max_tokens": 16, "stop": "\n", "logprobs": 2, "echo": False, "best_of": 1}),
    (1, 1, {"prompt": [[1, 2, 3], [4, 5]], "n": 3, "temperature": 0, "ignore_eos": True, "logit_bias": {}, "suffix": ""}),
    (1, 0, {"prompt": ["a", "b c"], "max_tokens": 1}),
    (1, 1, {"prompt": [1, 2, 3]}),
    (2, 0, {"prompt": "Hello world", "add_special_tokens": False}),
    (2, 1, {"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": False}),
    (3, 0, {"tokens": [1, 2, 3, 40, 100]}),
    (3, 1, {"model": "x", "tokens": []}),
    # Structured output and tools.
    (0, 1, {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8, "response_format": {"type": "json_schema",
            "json_schema": {"name": "p", "schema": {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0},
                "b": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3}, "c": {"$ref": "#/$defs/c"}},
                "$defs": {"c": {"anyOf": [{"type": "null"}, {"type": "string", "pattern": "^[a-z]+$"}]}},
                "required": ["a"], "additionalProperties": False}}}}),
    (1, 0, {"prompt": "x", "max_tokens": 4, "regex": "[0-9]{2,4}(-[a-z]+)?"}),
    (1, 1, {"prompt": "x", "max_tokens": 4, "grammar": "root ::= \"(\" [a-z]+ (\",\" [a-z]+)* \")\"\n"}),
    (1, 0, {"prompt": "x", "grammar": "start: \"a\" b*\nb: /[0-9]/\n", "grammar_syntax": "lark"}),
    (0, 0, {"messages": [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{\"city\": \"P\"}"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"}],
            "tools": [{"type": "function", "function": {"name": "w", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}],
            "tool_choice": "required", "parallel_tool_calls": False}),
    (0, 1, {"messages": [{"role": "user", "content": "Hi"}], "response_format": {"type": "json_object"},
            "tools": [{"type": "function", "function": {"name": "w"}}], "tool_choice": {"type": "function", "function": {"name": "w"}}}),
]


# The constraint target: [kind (0 schema, 1 regex, 2 lark, 3 gbnf), tokenizer, choices...] then text.
CONSTRAINTS = [
    (0, json.dumps({"type": "object", "properties": {"n": {"type": "number", "minimum": -1, "maximum": 1},
                    "s": {"type": "string", "minLength": 2, "maxLength": 4}, "l": {"type": "array", "minItems": 1,
                    "items": {"const": True}}}, "required": ["n", "l"]})),
    (0, json.dumps({"anyOf": [{"type": "integer"}, {"type": "object", "additionalProperties": {"$ref": "#"}}]})),
    (1, "(a|b)*c{2,5}[^x-z]?"),
    (2, "start: expr\nexpr: term ((\"+\" | \"-\") term)*\nterm: NUMBER | \"(\" expr \")\"\nNUMBER: /[0-9]+/\n"),
    (3, "root ::= obj\nobj ::= \"{\" ( pair ( \",\" pair )* )? \"}\"\npair ::= [a-z]+ \":\" ( [0-9]+ | obj )\n"),
]


# PEFT LoRA adapters for the lora_peft target's tiny Llama (16 wide, 2 heads of 8, 1 KV
# head, MLP 32, 2 layers): module names as PEFT saves them, ranks 4 and 2, f32/f16/bf16.
LORA_PREFIX = "base_model.model.model.layers"
LORA_ADAPTERS = [
    ({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "use_rslora": False,
      "alpha_pattern": {"layers.1.self_attn.v_proj": 2}, "rank_pattern": {"v_proj": 2}},
     [(f"{LORA_PREFIX}.0.self_attn.q_proj.lora_A.weight", "F32", [4, 16], f32s(64)),
      (f"{LORA_PREFIX}.0.self_attn.q_proj.lora_B.weight", "F32", [16, 4], f32s(64, 2)),
      (f"{LORA_PREFIX}.1.self_attn.v_proj.lora_A.weight", "F16", [2, 16], f16s(32)),
      (f"{LORA_PREFIX}.1.self_attn.v_proj.lora_B.weight", "F16", [8, 2], f16s(16, 3)),
      (f"{LORA_PREFIX}.1.mlp.down_proj.lora_A.weight", "BF16", [4, 32], bf16s(128)),
      (f"{LORA_PREFIX}.1.mlp.down_proj.lora_B.weight", "BF16", [16, 4], bf16s(64, 4))]),
    ({"r": 4, "lora_alpha": 16, "use_rslora": True, "bias": "none", "modules_to_save": None},
     [(f"{LORA_PREFIX}.0.mlp.gate_proj.lora_A.weight", "F32", [4, 16], f32s(64, 5)),
      (f"{LORA_PREFIX}.0.mlp.gate_proj.lora_B.weight", "F32", [32, 4], f32s(128, 6))]),
]


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def streamed(mode, load_as, seed, data):
    return bytes([mode, load_as]) + struct.pack("<I", seed) + data


def small():
    root = os.path.join(HERE, "seeds")
    ggufs = {
        "llama-spm.gguf": tiny_llama(),
        "llama-bpe-rope-freqs.gguf": tiny_llama(tokenizer="gpt2", rope_freqs=True, alignment=64),
        "qwen2.gguf": tiny_llama(arch="qwen2", tokenizer="gpt2",
                                 extra_kv=[("qwen2.rope.scaling.type", STR, "linear"), ("qwen2.rope.scaling.factor", F32, 2.0),
                                           ("nested", ARR, (ARR, [(U8, [1, 2]), (I64, [-1])])),
                                           ("misc", ARR, (F64, [1.5])), ("flag", BOOL, True), ("i16", I16, -3), ("u16", U16, 3),
                                           ("i8", I8, -1), ("u64", U64, 1 << 40)]),
        "v2-no-tensors.gguf": gguf([("general.architecture", STR, "llama")], [], version=2),
    }
    for name, data in ggufs.items():
        write(f"{root}/gguf_file/{name}", data)
        write(f"{root}/gguf_header/{name}", streamed(4, 0, 1, data))
        for i, (mode, load_as) in enumerate([(0, 0), (5, 1), (6, 4), (3, 2)][:2 if len(data) > 1000 else 1]):
            write(f"{root}/gguf_stream/{name}.{i}", streamed(mode ^ (len(data) & 4), load_as + len(name), 12345 + i, data))
    st = tiny_safetensors()
    write(f"{root}/safetensors_file/tiny.safetensors", st)
    for i, (mode, load_as) in enumerate([(0, 0), (5, 1), (6, 4), (3, 3)]):
        write(f"{root}/safetensors_stream/tiny.{i}", streamed(mode, load_as, 777 + i, st))
    for name, cfg in CONFIGS.items():
        write(f"{root}/hf_config/{name}", json.dumps(cfg, indent=1))
    write(f"{root}/hf_config/with-generation-config", json.dumps(LLAMA_CONFIG) + "\0" + json.dumps(GENERATION_CONFIG))
    for name, t in TEMPLATES.items():
        fields = [t, "<s>", "</s>"] + [x for m in MESSAGES for x in m]
        write(f"{root}/chat_template/{name}", b"\x01" + "\0".join(fields).encode())
    for i, (endpoint, model, body) in enumerate(REQUESTS):
        write(f"{root}/server_request/{i:02}.json", bytes([endpoint, model]) + json.dumps(body).encode())
    for i, (kind, text) in enumerate(CONSTRAINTS):
        write(f"{root}/constraint/{i:02}", bytes([kind, 0, 7]) + text.encode())
    for i, (config, tensors) in enumerate(LORA_ADAPTERS):
        write(f"{root}/lora_peft/{i:02}", json.dumps(config).encode() + b"\0" + safetensors(tensors))
    # Structured (arbitrary) targets: a few byte patterns to start from.
    for t in ["gguf_tokenizer", "detokenize", "sampling"]:
        for i, pattern in enumerate([b"\0" * 64, bytes(range(256)), b"\x01\xff" * 40 + b"The capital of France\0\0\0"]):
            write(f"{root}/{t}/{i}", pattern)


def shared(models):
    corpus = os.path.join(HERE, "corpus")
    stories = os.path.join(models, "stories260K")
    if os.path.isdir(stories):
        with open(os.path.join(stories, "model.safetensors"), "rb") as f:
            st = f.read()
        write(f"{corpus}/safetensors_file/stories260K.safetensors", st)
        write(f"{corpus}/safetensors_stream/stories260K", streamed(1, 0, 99, st))
        with open(os.path.join(stories, "config.json")) as f:
            write(f"{corpus}/hf_config/stories260K.json", f.read())
        print(f"seeds from {stories}")
    else:
        print(f"no {stories}: skipped")
    cache = os.environ.get("TANDEM_CACHE_DIR", os.path.expanduser("~/.cache/tandem"))
    smollm = os.path.join(cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    if os.path.isfile(smollm):
        meta = gguf_metadata_only(smollm)
        write(f"{corpus}/gguf_file/smollm2-metadata.gguf", meta)
        write(f"{corpus}/gguf_header/smollm2-metadata", streamed(5, 0, 3, meta))
        write(f"{corpus}/gguf_stream/smollm2-metadata", streamed(1, 0, 3, meta))
        print(f"seeds from {smollm} ({len(meta)} bytes of metadata)")
    else:
        print(f"no {smollm}: skipped (tandem inspect fetches it)")


def gguf_metadata_only(path):
    """The file's metadata (tokenizer, chat template) with an empty tensor directory."""
    with open(path, "rb") as f:
        head = f.read(16 << 20)
    _, _, n_kv = struct.unpack_from("<IQQ", head, 4)
    pos = 24

    def skip(ty, pos):
        if ty == STR:
            (n,) = struct.unpack_from("<Q", head, pos)
            return pos + 8 + n
        if ty == ARR:
            elem, n = struct.unpack_from("<IQ", head, pos)
            pos += 12
            for _ in range(n):
                pos = skip(elem, pos)
            return pos
        return pos + {U8: 1, I8: 1, BOOL: 1, U16: 2, I16: 2, U32: 4, I32: 4, F32: 4, U64: 8, I64: 8, F64: 8}[ty]

    for _ in range(n_kv):
        pos = skip(STR, pos)
        (ty,) = struct.unpack_from("<I", head, pos)
        pos = skip(ty, pos + 4)
    return head[:4] + struct.pack("<IQQ", 3, 0, n_kv) + head[24:pos]


if __name__ == "__main__":
    if sys.argv[1:2] == ["small"]:
        small()
    elif sys.argv[1:2] == ["shared"]:
        shared(sys.argv[2] if len(sys.argv) > 2 else os.path.join(HERE, "..", "..", "shared", "models"))
    else:
        sys.exit(__doc__)
