"""Unified prototype learning: trains a :class:`~engine.protonet.PrototypeHead` on cached
crop tokens (SimGCD / ProtoGCD style), for known (labelled) and novel types at once.

Per step, two token-level augmented views of a batch of regions (grid rotation/flip, dropped
tokens, feature noise, jittered guidance) are embedded, and:

* **self-distillation**: each view's prototype distribution (student temperature) learns the
  other view's sharpened one (teacher temperature, annealed from 0.07 to 0.04), no gradient
  through the teacher;
* **mean-entropy regulariser**: the batch-mean prediction is pushed towards high entropy,
  so that no prototype swallows everything;
* **unsupervised contrastive** (InfoNCE between the two views of each region);
* for regions with a label (a reviewer-confirmed type, or an imported one): **cross-entropy**
  on the known prototypes and **supervised contrastive**, weighted by ``supervised_weight``.

Novel prototypes start at the k-means centres of the initial embeddings, known ones at the
mean embedding of their labelled members. Everything is seeded: the same tokens, labels and
seed give the same head on the CPU.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from engine.config import DiscoveryConfig
from engine.protonet import PrototypeHead, sharpen_temperature
from engine.tokens import RegionTokens


@dataclass
class TrainReport:
    epochs: int
    final_loss: float
    losses: list[float]


def as_tensors(
    tokens: RegionTokens, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.from_numpy(tokens.tokens).to(device),
        torch.from_numpy(tokens.anomaly).to(device),
        torch.from_numpy(tokens.regions).to(device),
    )


@torch.no_grad()
def embed_all(
    head: PrototypeHead, tokens: RegionTokens, device: torch.device, batch: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """(N, d) embeddings and (N, T) attention weights of every region (eval mode)."""
    head.eval()
    embs, weights = [], []
    for start in range(0, len(tokens), batch):
        part = tokens.select(np.arange(start, min(start + batch, len(tokens))))
        e, w = head.embed(*as_tensors(part, device))
        embs.append(e.cpu().numpy())
        weights.append(w.cpu().numpy())
    if not embs:
        t = tokens.grid[0] * tokens.grid[1]
        return np.zeros((0, head.embedding_dim), np.float32), np.zeros((0, t), np.float32)
    return np.concatenate(embs).astype(np.float32), np.concatenate(weights).astype(np.float32)


def _augment(
    x: torch.Tensor,
    a: torch.Tensor,
    r: torch.Tensor,
    grid: tuple[int, int],
    cfg: DiscoveryConfig,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One random view: the same dihedral transform of the grid for the whole batch, then
    per-region token dropout (at least one token kept), feature noise and guidance jitter."""
    n, t, c = x.shape
    h, w = grid
    k = int(torch.randint(0, 4, (1,), generator=gen))
    flip = bool(torch.randint(0, 2, (1,), generator=gen))

    def transform(v: torch.Tensor) -> torch.Tensor:
        v = v.reshape(n, h, w, -1)
        v = torch.rot90(v, k, dims=(1, 2)) if h == w else v
        v = v.flip(2) if flip else v
        return v.reshape(n, t, -1)

    x2, a2, r2 = transform(x), transform(a[..., None])[..., 0], transform(r)
    keep = torch.rand(n, t, generator=gen) >= cfg.token_dropout
    keep[torch.arange(n), torch.randint(0, t, (n,), generator=gen)] = True
    scale = x2.detach().std() if x2.numel() > 1 else torch.tensor(1.0)
    x2 = x2 + cfg.token_noise * scale * torch.randn(x2.shape, generator=gen)
    a2 = a2 + cfg.token_noise * torch.randn(a2.shape, generator=gen)
    return x2, a2, r2, keep.to(x.device)


def _info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    z = torch.cat([z1, z2])
    n = len(z1)
    sim = (z @ z.t()) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


def _sup_con(z: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss (Khosla et al.) over the labelled embeddings."""
    n = len(z)
    sim = (z @ z.t()) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    sim = sim.masked_fill(self_mask, float("-inf"))
    log_prob = sim - torch.logsumexp(sim, dim=1, keepdim=True)
    positives = (labels[:, None] == labels[None, :]) & ~self_mask
    count = positives.sum(1)
    has = count > 0
    if not has.any():
        return z.sum() * 0.0
    mean_log = (log_prob.masked_fill(~positives, 0.0).sum(1)[has]) / count[has]
    return -mean_log.mean()


def _batch_loss(
    head: PrototypeHead,
    views: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]],
    lab: torch.Tensor,
    n_known: int,
    cfg: DiscoveryConfig,
    t_teacher: float,
    sup_w: float,
    device: torch.device,
) -> torch.Tensor:
    """The loss of one batch seen in two augmented views: self-distillation with a mean-
    entropy regulariser and InfoNCE between the views, plus (``sup_w``) cross-entropy and
    supervised contrast on the regions of known types (``lab`` >= 0)."""
    embs = [head.embed(*(v.to(device) for v in view))[0] for view in views]
    sims = [head.similarities(e) for e in embs]
    student = [F.log_softmax(s / cfg.student_temperature, dim=1) for s in sims]
    teacher = [F.softmax(s.detach() / t_teacher, dim=1) for s in sims]
    distill = -0.5 * (
        (teacher[1] * student[0]).sum(1).mean() + (teacher[0] * student[1]).sum(1).mean()
    )
    mean_p = torch.cat([s.exp() for s in student]).mean(0)
    neg_entropy = (mean_p * torch.log(mean_p + 1e-8)).sum()
    unsup = distill + cfg.entropy_weight * neg_entropy
    rep = _info_nce(embs[0], embs[1], cfg.contrastive_temperature)
    loss = (1 - sup_w) * (unsup + rep)
    known = lab >= 0
    if sup_w > 0 and known.any():
        ce = (
            sum(
                F.cross_entropy(s[known][:, :n_known] / cfg.student_temperature, lab[known])
                for s in sims
            )
            / 2
        )
        z = torch.cat([embs[0][known], embs[1][known]])
        con = _sup_con(z, torch.cat([lab[known], lab[known]]), cfg.contrastive_temperature)
        loss = loss + sup_w * (ce + con)
    return loss


def train_head(
    head: PrototypeHead,
    tokens: RegionTokens,
    labels: np.ndarray,
    n_known: int,
    cfg: DiscoveryConfig,
    *,
    seed: int,
    device: torch.device,
    epochs: int | None = None,
    progress: bool = False,
) -> TrainReport:
    """Train ``head`` in place; ``labels[i]`` is a known-type index (< n_known) or -1."""
    epochs = cfg.head_epochs if epochs is None else epochs
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64))
    if len(labels_t) != len(tokens):
        raise ValueError(f"{len(labels_t)} labels for {len(tokens)} regions")
    if epochs <= 0 or len(tokens) < 2:
        return TrainReport(0, float("nan"), [])
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    head.to(device).train()
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.head_lr, weight_decay=cfg.head_weight_decay)
    x_all, a_all, r_all = as_tensors(tokens, torch.device("cpu"))
    n = len(tokens)
    sup_w = cfg.supervised_weight if bool((labels_t >= 0).any()) else 0.0
    losses: list[float] = []
    bar = tqdm(
        range(epochs), desc="train prototypes", disable=not progress, file=sys.stderr, leave=False
    )
    with torch.enable_grad():
        for epoch in bar:
            t_teacher = sharpen_temperature(
                epoch, epochs, *cfg.teacher_temperature, cfg.teacher_warmup
            )
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, cfg.head_batch_size):
                idx = order[start : start + cfg.head_batch_size]
                if len(idx) < 2:
                    continue
                views = [
                    _augment(x_all[idx], a_all[idx], r_all[idx], tokens.grid, cfg, gen)
                    for _ in range(2)
                ]
                loss = _batch_loss(
                    head, views, labels_t[idx].to(device), n_known, cfg, t_teacher, sup_w, device
                )
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
            losses.append(total)
    head.eval()
    return TrainReport(epochs, losses[-1] if losses else float("nan"), losses)
