"""GPU: `train_lm` tokens/s and MFU for a ~125M Llama in bf16 against plain JAX with cuDNN
attention on the same chip, in the same run (goal: within 10 %).

- baseline: a plain-JAX decoder-only Llama of the same shape (RMSNorm, RoPE, SwiGLU, untied
  embeddings), bf16 compute with fp32 parameters, AdamW (optax) with global-norm clipping,
  layers under `lax.scan`, attention `jax.nn.dot_product_attention(implementation="cudnn")`;
- ours: the body of the `train_lm` step (levanter), `mixed_precision="p=f32,c=bfloat16"`,
  `accelerator="gpu:1"`, on a BPE tokenizer and token cache built here from the KJV corpus.
  The body is called directly (`train_lm.fn.__wrapped__`): levanter's own per-step duration is
  what is compared, so Prefect (outside the step loop) is left out.

Both figures use one FLOP count (6 N per token for the matmul parameters, input embedding
excluded, plus 12 L T d for attention) and the chip's dense bf16 peak, so the MFU ratio is the
tokens/s ratio. Step times are medians after the warm-up steps.

Not part of `make bench`'s default list (`python -m benches.run_all benches.gpu_train_mfu`
adds it). Without a GPU it prints one line and exits 0. `--tiny` runs both sides with a tiny
model on whatever device there is (a check of this script, not a measurement).

    python -m benches.gpu_train_mfu [--steps 40] [--batch 32] [--seq 1024]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "kjv")
GOAL = 0.10  # train_lm within 10 % of the baseline's tokens/s

# ~125M parameters with an 8,192-token vocabulary: 12 x 9.4M (layers) + 2 x 6.3M (embeddings)
LLAMA_125M = dict(
    hidden_dim=768, num_layers=12, num_heads=12, num_kv_heads=12, intermediate_dim=3072
)
TINY = dict(hidden_dim=64, num_layers=2, num_heads=4, num_kv_heads=4, intermediate_dim=256)

# Dense bf16 peak FLOP/s by device kind (substring, first match).
PEAK_BF16 = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 125e12),
]


def gpu_devices() -> list:
    try:
        import jax

        return [d for d in jax.devices() if d.platform in ("gpu", "cuda", "rocm")]
    except Exception:  # noqa: BLE001 - no usable backend is "no GPU"
        return []


def peak_flops(device_kind: str) -> float | None:
    return next((peak for name, peak in PEAK_BF16 if name in device_kind), None)


def flops_per_token(shape: dict, vocab: int, seq: int) -> float:
    d, layers, ff = shape["hidden_dim"], shape["num_layers"], shape["intermediate_dim"]
    head = d // shape["num_heads"]
    kv = shape["num_kv_heads"] * head
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff  # q, o, k, v, gate, up, down
    matmul_params = layers * per_layer + d * vocab  # lm_head; the input lookup is no matmul
    return 6 * matmul_params + 12 * layers * seq * d


# --- the plain-JAX baseline -------------------------------------------------------------------


def baseline_tokens_per_s(shape: dict, vocab: int, batch: int, seq: int, steps: int, tiny: bool):
    import jax
    import jax.numpy as jnp
    import optax

    d, layers, ff = shape["hidden_dim"], shape["num_layers"], shape["intermediate_dim"]
    heads, kv_heads = shape["num_heads"], shape["num_kv_heads"]
    head = d // heads
    implementation = None if tiny else "cudnn"

    def init(key):
        keys = iter(jax.random.split(key, 16))

        def normal(shape_, scale=0.02):
            return scale * jax.random.normal(next(keys), shape_, jnp.float32)

        return {
            "embed": normal((vocab, d)),
            "lm_head": normal((d, vocab)),
            "final_norm": jnp.ones((d,), jnp.float32),
            "layers": {
                "attn_norm": jnp.ones((layers, d), jnp.float32),
                "mlp_norm": jnp.ones((layers, d), jnp.float32),
                "wq": normal((layers, d, heads * head)),
                "wk": normal((layers, d, kv_heads * head)),
                "wv": normal((layers, d, kv_heads * head)),
                "wo": normal((layers, heads * head, d)),
                "w_gate": normal((layers, d, ff)),
                "w_up": normal((layers, d, ff)),
                "w_down": normal((layers, ff, d)),
            },
        }

    def rms_norm(x, weight):
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + 1e-6)
        return (normed * weight).astype(jnp.bfloat16)

    positions = jnp.arange(seq)
    inv_freq = 1.0 / (10000.0 ** (jnp.arange(0, head, 2, dtype=jnp.float32) / head))
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]

    def rope(x):
        x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
        rotated = jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)
        return rotated.astype(jnp.bfloat16)

    def layer(x, p):
        p = jax.tree.map(lambda w: w.astype(jnp.bfloat16), p)
        h = rms_norm(x, p["attn_norm"])
        q = rope((h @ p["wq"]).reshape(batch, seq, heads, head))
        k = rope((h @ p["wk"]).reshape(batch, seq, kv_heads, head))
        v = (h @ p["wv"]).reshape(batch, seq, kv_heads, head)
        attn = jax.nn.dot_product_attention(q, k, v, is_causal=True, implementation=implementation)
        x = x + attn.reshape(batch, seq, heads * head) @ p["wo"]
        h = rms_norm(x, p["mlp_norm"])
        x = x + (jax.nn.silu(h @ p["w_gate"]) * (h @ p["w_up"])) @ p["w_down"]
        return x, None

    def loss_fn(params, tokens):
        x = params["embed"].astype(jnp.bfloat16)[tokens[:, :-1]]
        x = jnp.pad(x, ((0, 0), (0, 1), (0, 0)))  # keep seq positions: the last predicts nothing
        x, _ = jax.lax.scan(layer, x, params["layers"])
        logits = rms_norm(x, params["final_norm"]) @ params["lm_head"].astype(jnp.bfloat16)
        logits = logits[:, :-1].astype(jnp.float32)
        targets = tokens[:, 1:]
        return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()

    optimizer = optax.chain(
        optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b1=0.9, b2=0.95, weight_decay=0.1)
    )

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def train_step(params, opt_state, tokens):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    params = init(jax.random.PRNGKey(0))
    opt_state = optimizer.init(params)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (batch, seq + 1), 0, vocab)
    tokens = tokens[:, :seq]
    durations = []
    for _ in range(steps):
        started = time.perf_counter()
        params, opt_state, loss = train_step(params, opt_state, tokens)
        loss.block_until_ready()
        durations.append(time.perf_counter() - started)
    step_time = statistics.median(durations[min(5, steps // 2) :])
    return batch * seq / step_time, float(loss)


# --- train_lm -----------------------------------------------------------------------------------


def build_data(work: str, vocab: int, copies: int) -> tuple[str, str]:
    """A BPE tokenizer and a token cache of `copies` copies of the KJV (enough tokens for the
    steps: the KJV alone is ~1M tokens, 30 steps of 32 x 1,024)."""
    import gzip
    import shutil

    from tasks.data.tokenize import tokenize
    from tasks.data.train_tokenizer import train_tokenizer

    corpus = os.path.join(work, "corpus")
    os.makedirs(corpus)
    shards = sorted(f for f in os.listdir(CORPUS) if f.endswith(".jsonl.gz"))
    for copy in range(copies):
        for shard in shards:
            with gzip.open(os.path.join(CORPUS, shard), "rb") as src:
                with gzip.open(os.path.join(corpus, f"c{copy}-{shard}"), "wb") as dst:
                    shutil.copyfileobj(src, dst)
    tokenizer = os.path.join(work, "tokenizer")
    cache = os.path.join(work, "cache")
    train_tokenizer.fn.__wrapped__(corpus=CORPUS, vocab_size=vocab, output_path=tokenizer)
    tokenize.fn.__wrapped__(dataset=corpus, tokenizer=tokenizer, name="gpu", output_path=cache)
    return tokenizer, cache


def train_lm_tokens_per_s(
    shape: dict, tokenizer: str, cache: str, batch: int, seq: int, steps: int, tiny: bool, work: str
) -> tuple[float, int, float | None]:
    """(tokens/s from levanter's per-step durations, vocabulary size, levanter's own MFU)."""
    from tasks.data.tokenizer_files import load_tokenizer
    from tasks.lm.train import train_lm

    out = os.path.join(work, "train")
    train_lm.fn.__wrapped__(
        data={"kjv": cache},
        tokenizer=tokenizer,
        name="gpu-mfu",
        **shape,
        seq_len=seq,
        batch_size=batch,
        num_train_steps=steps,
        steps_per_eval=steps,
        max_eval_batches=1,
        mixed_precision="f32" if tiny else "p=f32,c=bfloat16",
        accelerator="cpu" if tiny else "gpu:1",
        output_path=out,
    )
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    skip = min(5, steps // 2)
    durations = [
        r["throughput/duration"]
        for r in rows
        if r.get("throughput/duration") is not None and (r.get("step") or 0) >= skip
    ]
    mfu = [r["throughput/mfu"] for r in rows if r.get("throughput/mfu") is not None]
    return (
        batch * seq / statistics.median(durations),
        len(load_tokenizer(tokenizer)),
        statistics.median(mfu) if mfu else None,
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--copies", type=int, default=4)
    parser.add_argument("--tiny", action="store_true", help="a tiny model on any device")
    args = parser.parse_args()
    gpus = gpu_devices()
    if not gpus and not args.tiny:
        print("gpu_train_mfu: no GPU visible to JAX; skipped (run it on a CUDA machine)")
        return 0
    shape = TINY if args.tiny else LLAMA_125M
    batch, seq, steps = (8, 64, 12) if args.tiny else (args.batch, args.seq, args.steps)
    os.environ.setdefault("WANDB_MODE", "disabled")
    device = gpus[0].device_kind if gpus else "cpu"
    work = tempfile.mkdtemp(prefix="lmflows-bench-gpu-")
    try:
        tokenizer, cache = build_data(work, args.vocab if not args.tiny else 512, args.copies)
    except ImportError as exc:
        print(f"gpu_train_mfu: cannot build the data here ({exc}); skipped")
        return 0
    try:
        ours, vocab, levanter_mfu = train_lm_tokens_per_s(
            shape, tokenizer, cache, batch, seq, steps, args.tiny, work
        )
    except ImportError as exc:  # the GPU image may lack levanter, haliax or ray
        print(f"gpu_train_mfu: train_lm cannot run here ({exc}); goal not measured")
        return 1
    baseline, _ = baseline_tokens_per_s(shape, vocab, batch, seq, steps, args.tiny)
    flops = flops_per_token(shape, vocab, seq)
    peak = peak_flops(device)
    params = flops_per_token(shape, vocab, 0) / 6 + vocab * shape["hidden_dim"]
    print(
        f"device {device}; Llama {params / 1e6:.1f}M parameters (vocab {vocab}), batch {batch} "
        f"x seq {seq}, {steps} steps, bf16 compute / fp32 params"
    )
    for label, rate in (("plain JAX, cuDNN attention", baseline), ("train_lm (levanter)", ours)):
        mfu = f", MFU {rate * flops / peak:.1%}" if peak else ", MFU n/a (unknown peak)"
        print(f"{label}: {rate:,.0f} tokens/s{mfu}")
    if levanter_mfu is not None:
        print(f"levanter's own throughput/mfu for train_lm: {levanter_mfu:.1f}")
    ratio = ours / baseline
    verdict = "met" if ratio >= 1 - GOAL else "NOT met"
    if args.tiny:
        verdict = "not judged (--tiny)"
    print(
        f"goal: train_lm tokens/s and MFU within {GOAL:.0%} of plain JAX + cuDNN attention: "
        f"ratio {ratio:.2f}x -> {verdict}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
