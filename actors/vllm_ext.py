"""vLLM worker extension: joins the weight group and loads broadcast weights in place.

vLLM mixes this class into its worker (`worker_extension_cls`), so `self` is the worker and these
methods run where the model lives; the engine reaches them through `collective_rpc`.
"""

from __future__ import annotations

import torch

from pipeline.collective import WeightGroup, digest, unflatten
from pipeline.messages import TensorMeta


class WeightReceiver:
    def rl_join_weight_group(self, backend: str, host: str, port: int, rank: int, world_size: int) -> None:
        self._rl_group = WeightGroup(backend, host, port, rank, world_size)

    def rl_receive_weights(self, metas: list[list], dtype: str) -> list[float]:
        """Receive one flat buffer from rank 0, load it with vLLM's in-place reload, return a digest."""
        tensor_metas = [TensorMeta(*m) for m in metas]
        numel = sum(int(torch.tensor(m.shape).prod()) if m.shape else 1 for m in tensor_metas)
        flat = torch.empty(numel, dtype=getattr(torch, dtype), device=self._rl_group.device)
        self._rl_group.broadcast(flat)
        # reload_weights runs the model's own loader (fusing q/k/v, gate/up) and the post-load
        # processing, so a checkpoint-format state dict is the right input.
        self.reload_weights(weights_iterator=unflatten(flat, tensor_metas), is_checkpoint_format=True)
        return self.rl_weights_digest()

    def rl_weights_digest(self) -> list[float]:
        return digest(self.model_runner.get_model().parameters())
