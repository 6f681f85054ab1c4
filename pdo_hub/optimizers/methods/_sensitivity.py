"""How much the model's output moves when a unit of a layer's input goes: first-order sensitivity scores.

`prune` removes input units of consumer layers (a channel, an FFN neuron, an attention head's slice of
the output projection's input) and replaces each by its calibration mean (a Linear's bias takes it) or
zero. Scoring a unit by the energy it carries into its own layer (`prune._channel_scores`) ignores what
the rest of the network does with it: a channel that later layers damp costs little, one they amplify
costs much. Here each unit gets a gate g per sample, x_u -> mean_u + g (x_u - mean_u), and the score
is the expected squared change of the loss gradient at g = 1, summed over the calibration samples:

    score_u = sum_s E_v (d <v, e_s> / d g_{s,u})^2,   v ~ N(0, P_s / |e_s|^2),

where e_s is what the model's users consume (the mask-pooled embedding of a token encoder, otherwise
the flattened output) and P_s projects out e_s's own direction. `1 - cos(e_s, e_s + d)` is
`d^T P_s d / (2 |e_s|^2)` to second order, so the expectation over v is the Gauss-Newton estimate of
the output loss of removing the unit alone (Taylor / Fisher importance: Molchanov et al., CVPR 2019;
Kwon et al., "A Fast Post-Training Pruning Framework for Transformers", NeurIPS 2022, score whole heads
and neurons by the Fisher information of their mask variables). A few random v per sample suffice:
the sum over samples averages the draws' noise.

all-MiniLM-L6-v2 pruned with 48 sentences of prose and no recovery (`scripts/bench_prune_data.py`;
held-out cosine against FP32, same kind / everyday text): at size 0.9 (0.79 of the multiply-adds)
0.9706 / 0.8745 against 0.9687 / 0.8643 with energy scores; at 0.85 (0.68) 0.9500 / 0.8419 against
0.9411 / 0.7971 (docs/benchmarks.md has 192 and 768 sentences and the digits ResNet-18).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

from ..evaluate import sample_vectors, token_mask
from ..inputs import Inputs, call_model, output_tensor, to_device

logger = logging.getLogger(__name__)
DRAWS = 4  # random directions per sample (one-off: 1 / 4 / 32 / 128 gave 0.970 / 0.971 / 0.973 / 0.972 at size 0.9 above)


def _channel_axis(module: nn.Module) -> int:
    return 1 if isinstance(module, (nn.Conv1d, nn.Conv2d)) else -1


def _gated(x: torch.Tensor, gate: torch.Tensor, mean: torch.Tensor | None, axis: int) -> torch.Tensor:
    """x with each sample's input units scaled about `mean` by `gate` ([samples, units])."""
    channels = x.shape[axis]
    gate = gate.repeat_interleave(channels // gate.shape[1], dim=1)  # a unit spans consecutive channels (a head)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[axis] = channels
    gate = gate.reshape(shape)
    if mean is None:
        return x * gate
    centre = mean.to(x.dtype).reshape([channels if d == (axis % x.dim()) else 1 for d in range(x.dim())])
    return centre + gate * (x - centre)


def input_sensitivity(
    model: nn.Module, consumers: dict[str, nn.Module], units: dict[str, int], inputs: list[Inputs],
    device: torch.device, means: dict[str, torch.Tensor], *, draws: int = DRAWS, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """{path: score per input unit (float64)} of each consumer; {} if the model cannot be differentiated.

    Args:
        consumers: {path: layer} whose inputs are scored.
        units: {path: number of units}; a unit is channels / units consecutive input channels (a head).
        means: {path: mean input channel}: the value a removed channel is replaced by (zero when absent).
    """
    scores = {path: torch.zeros(units[path], dtype=torch.float64) for path in consumers}
    generator = torch.Generator().manual_seed(seed)
    frozen = [p for p in model.parameters() if p.requires_grad]
    for parameter in frozen:
        parameter.requires_grad_(False)  # gradients reach the gates only: no weight gradients computed
    try:
        for batch in inputs:
            if not _accumulate(model, consumers, units, to_device(batch, device), means, draws, generator, scores):
                return {}
    finally:
        for parameter in frozen:
            parameter.requires_grad_(True)
    return scores


def _accumulate(model, consumers, units, batch, means, draws, generator, scores) -> bool:
    gates: dict[str, list[torch.Tensor]] = {path: [] for path in consumers}

    def hook_for(path: str, module: nn.Module):
        axis = _channel_axis(module)

        def hook(_module, args):
            if not args or not isinstance(args[0], torch.Tensor):
                return None  # input passed by keyword: left ungated (its units then score 0 here)
            x = args[0]
            gate = torch.ones(x.shape[0], units[path], dtype=x.dtype, device=x.device, requires_grad=True)
            gates[path].append(gate)
            mean = means.get(path)
            return (_gated(x, gate, None if mean is None else mean.to(x.device), axis), *args[1:])
        return hook

    handles = [module.register_forward_pre_hook(hook_for(path, module)) for path, module in consumers.items()]
    try:
        with torch.enable_grad():
            output = output_tensor(call_model(model, batch)).float()
            mask = token_mask(batch, output)
            embedding = sample_vectors(output, None if mask is None else mask.to(output.device))  # what fidelity compares
    finally:
        for handle in handles:
            handle.remove()
    leaves = [(path, gate) for path, made in gates.items() for gate in made]
    if not embedding.requires_grad or not leaves:
        logger.debug("sensitivity: the output does not depend on the gated inputs by autograd")
        return False
    detached = embedding.detach()
    norm = detached.norm(dim=1, keepdim=True).clamp_min(1e-12)
    direction = detached / norm
    for draw in range(draws):
        v = torch.randn(detached.shape, generator=generator).to(detached.device)
        v = (v - (v * direction).sum(1, keepdim=True) * direction) / norm
        grads = torch.autograd.grad((v * embedding).sum(), [gate for _, gate in leaves], retain_graph=draw < draws - 1,
                                    allow_unused=True)
        for (path, _), grad in zip(leaves, grads):
            if grad is not None:
                scores[path] += grad.detach().double().square().sum(0).cpu() / draws
    return True
