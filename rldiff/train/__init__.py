"""The training side of rldiff.

- `protocol`: what the loop needs from an algorithm and a domain.
- `trainer`: the one training loop (`train`), checkpoint evaluation (`evaluate_checkpoint`) and
  rebuilding a finished run with its latest checkpoint (`load_run`).
- `checkpoint`: atomic, resumable checkpoints.
- `logging`: `metrics.jsonl`, TensorBoard, W&B and `summary.md`.
- `plots`: PNG curves of reward, KL and loss.

This package imports nothing on its own, so algorithms can import `rldiff.train.protocol`
without pulling in the trainer.
"""
