"""Memory of TRL's fused LM head (``trl.trainer.utils.add_fused_lm_head``), read from TRL 1.16's
``trl/kernels/chunked_logprob.py``. Pure arithmetic.

The head projects the last hidden states through ``lm_head`` in tiles of
``min(N, 4096)`` tokens x ``32768`` vocabulary columns, folds each tile into online log-sum-exp
statistics and never builds the ``(batch, seq, vocab)`` logits. What stays or is transient:

* saved for backward: the hidden states it scores (a copy: ``hidden[mask]`` on Triton devices, the
  reshape of the shifted ``[:, :-1]`` slice elsewhere), in the stream dtype, plus a few fp32 values
  per token (log-sum-exp, entropy, log-probs);
* one tile buffer ``mm_buf`` of ``min(N, 4096) x 32768`` in the compute dtype (the full chunk width,
  even when the vocabulary is narrower), in the forward and again in the backward;
* the backward accumulates ``grad_hidden`` in fp32 (``[N, hidden]``) and casts it to the stream dtype;
  a trained head (full fine-tuning) also gets an fp32 ``[vocab, hidden]`` gradient accumulator;
* on CUDA/XPU with Triton the fold runs in place in the tile (no other tile-sized tensor), and only
  positions with a label are scored; elsewhere (CPU) the fold is torch code over every position and
  keeps fp32 tile-sized temporaries: measured with the live-storage tracker on TRL 1.16
  (fp32 and bf16, vocab 8k and 32k), the forward peaks at 3.25 fp32 ``[n, min(V, 32768)]`` tiles
  beyond ``mm_buf`` (3.0 with only log-probs requested) and the backward at 7.25.
"""

from __future__ import annotations

from dataclasses import dataclass

# fp32 tile-sized temporaries alive at the CPU (torch) fold's peak, beyond mm_buf (measured, see above).
CPU_FORWARD_TILES = 3.25
CPU_FORWARD_TILES_LOGPROBS_ONLY = 3.0
CPU_BACKWARD_TILES = 7.25
PER_TOKEN_FP32_SAVED = 6     # log_z, entropy, log-probs, target logit and the masks, per scored token


@dataclass(frozen=True)
class FusedHead:
    """Bytes of the fused head for one forward + backward."""

    saved: int          # alive from the head's forward until its backward ends
    forward: int        # transient at the forward's peak
    backward: int       # transient at the backward's peak (the start of the model's backward)

    @property
    def peak(self) -> int:
        return self.saved + max(self.forward, self.backward)


def fused_head_bytes(*, tokens: int, hidden: int, vocab: int, stream: int, compute: int, head_weight: int,
                     triton: bool, trains_head: bool, vocab_chunk: int = 32768, token_chunk: int = 4096,
                     extra_outputs: bool = True) -> FusedHead:
    """Fused head memory for ``tokens`` scored positions (bytes per element: ``stream`` for the hidden
    states, ``compute`` for the tiles (autocast dtype, else the stream's), ``head_weight`` for ``lm_head``)."""
    n = min(tokens, token_chunk)
    cols = min(vocab, vocab_chunk)
    buf = n * vocab_chunk * compute
    saved = tokens * hidden * stream + tokens * 4 * PER_TOKEN_FP32_SAVED
    hidden_chunk = n * hidden * compute if compute != stream else 0       # hidden[...].to(compute_dtype)
    weight_chunk = cols * hidden * compute if compute != head_weight else 0   # weight[...].to(compute_dtype)
    grad_hidden = tokens * hidden * 4 + (tokens * hidden * stream if stream != 4 else 0)
    grad_weight = vocab * hidden * 4 + (vocab * hidden * head_weight if head_weight != 4 else 0) if trains_head else 0
    forward = buf + hidden_chunk + weight_chunk
    backward = buf + hidden_chunk + weight_chunk + grad_hidden + grad_weight
    if not triton:
        tiles = CPU_FORWARD_TILES if extra_outputs else CPU_FORWARD_TILES_LOGPROBS_ONLY
        forward += int(tiles * n * cols * 4)
        backward += int(CPU_BACKWARD_TILES * n * cols * 4)
    return FusedHead(int(saved), int(forward), int(backward))
