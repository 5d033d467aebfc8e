"""DETR (Carion et al. 2020, "End-to-End Object Detection with Transformers"), sized for CPU training.

Layout (shapes for a [B, 3, S, S] input, stride s = 2^backbone_stages, T = (S/s)² tokens, L decoder layers):
  Normalize → CNN trunk (the classifier's :class:`SmallResNet` stem + stages; names match, so a classifier
  checkpoint loads into it with :func:`cvpipe.models.weights.load_pretrained`) → [B, C, S/s, S/s]
  → 1×1 projection to d_model → tokens [B, T, d] + fixed 2-D sine positional encoding [T, d]
  → transformer encoder (post-norm; position added to queries and keys of every layer, as in DETR)
  → transformer decoder over Q object queries (query position added in every layer; a shared final LayerNorm
    gives every layer's output) → class head Linear(d, K+1) (last column = "no object") and box head
    3-layer MLP + sigmoid (cxcywh in 0..1), both shared by all L layers.

``forward`` returns tensors only (ONNX-friendly, no data-dependent control flow):
  "pred_logits" [B, Q, K+1], "pred_boxes" [B, Q, 4] (last layer),
  "aux_logits" [L-1, B, Q, K+1], "aux_boxes" [L-1, B, Q, 4] (intermediate layers, for the auxiliary losses),
  "image_whwh" [4] = (W, H, W, H) of the input in pixels (scales normalised boxes to pixels),
  and with ``queries="encoder"`` the per-token predictions "enc_logits" [B, T, K+1], "enc_boxes" [B, T, 4].
``decode`` → boxes [B, Q, 4] xyxy absolute pixels clipped to the image, scores [B, Q, K] = softmax over K+1
with the "no object" column dropped. One-to-one matching makes duplicates rare, so ``uses_nms = False``.

Queries (``queries``). All three keep DETR's set prediction, Hungarian matcher, losses and NMS-free output:
- "learned": the paper's decoder: Q learned query embeddings, content tgt = 0, boxes = sigmoid(MLP(h)).
- "anchors": each query owns a box. Learned anchor boxes a_q (DAB-DETR, Liu et al. 2022) give the reference
  r_0 = sigmoid(a_q); the query position of every layer is MLP(sine(r_l)); iterative box refinement
  (Deformable DETR, Zhu et al. 2021): b_l = sigmoid(MLP(h_l) + sigmoid⁻¹(r_l)), r_{l+1} = stop_grad(b_l);
  spatially modulated co-attention (SMCA, Gao et al. 2021): the cross-attention logits of query q and memory
  token t (centre p_t, normalised) get the Gaussian log-prior −½ Σ_{u∈{x,y}} ((p_t,u − r_u) / σ_u)²,
  σ_u = max(r_{w|h} / 2, one token), so a query looks around its box from the first step.
- "encoder" (default): as "anchors", but the references come from two-stage query selection (Deformable
  DETR's two-stage variant, RT-DETR, Zhao et al. 2024): every encoder token predicts class logits [K+1] and a
  box around itself ("enc_logits" [B, T, K+1], "enc_boxes" [B, T, 4], trained with the same one-to-one set
  loss), and the Q tokens with the highest foreground probability seed the decoder (reference = their box,
  content = their feature, both detached). The set loss on the tokens supervises the backbone directly.
Measured on the 128 px shapes data (1400 train images, batch 16, AdamW lr 1e-3, 1 CPU thread, val mAP@0.5 on
150 images): "learned" stays on the plateau where every query predicts the mean box (0.003 after 15 epochs);
"anchors" reaches 0.12 after 6 and 0.34 after 13 epochs; "encoder" 0.35 after 8, 0.69 after 16, 0.81 after
23 epochs (about 6 minutes at 90 images/s).

Other choices that make DETR learn in minutes on a CPU while staying DETR:
- Stride 16 on 128 px inputs (objects of 16-46 px meet an 8×8 memory, like DETR-DC5's finer memory relative
  to object size), d_model 128 and 2+3 layers instead of 256 and 6+6: ~1-2 M parameters.
- Few queries (16-20 for ≤ 6 objects, instead of 100 for ≤ ~70): each query is matched often, and the
  "no object" imbalance shrinks.
- Auxiliary decoding losses on every decoder layer (DETR §3.2); no dropout on small synthetic data
  (DETR: 0.1 on COCO).
- Training settings live in params: AdamW at lr 1e-3 for the whole network (DETR's 1e-4 / 1e-5 for a
  pretrained backbone assume batch 64 for 500 epochs; here everything trains from scratch for minutes; 2e-3
  learns no faster), a linear warm-up over ~100 steps (customary for post-norm transformers), gradient
  clipping at max-norm 0.1 as in the paper, and the class weight doubled (loss and matching cost 2 instead
  of 1, as Deformable DETR does), since classification, not localisation, is what lags on this data.

Pretrained start: with ``backbone`` (a torchvision name, :mod:`cvpipe.models.backbones`) the CNN trunk is that
network's tap at stride 2^backbone_stages (backbone_stages 2..5, i.e. stride 4..32), which feeds the same 1×1
``input_proj`` to d_model; the input is normalised with ImageNet's mean/std and ``backbone_weights`` (path or URL
of a torchvision state dict) loads it. ``train.backbone_lr_factor`` (0.1 is DETR's 1e-5 / 1e-4) then scales the
learning rate of ``self.backbone`` (None for the built-in trunk).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import MLP, box_convert

from cvpipe.models.scales import scaled
from cvpipe.models.classifier import SmallResNet
from cvpipe.models.backbones import build_backbone, input_normalize
from cvpipe.models.preprocess import Normalize


def sine_encoding(coords: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's sine encoding of coordinates in 0..1: [..., n] → [..., n · num_feats].

    Per coordinate u the channel pair (2k, 2k+1) is (sin(2πu / T^(2k/F)), cos(2πu / T^(2k/F))), F = num_feats,
    T = ``temperature``; the n blocks of F channels follow the order of the coordinates.
    """
    freq = temperature ** (2 * torch.div(torch.arange(num_feats, device=coords.device), 2, rounding_mode="floor")
                           .float() / num_feats)  # [F]
    angles = coords.float()[..., None] * (2 * math.pi) / freq  # [..., n, F]
    enc = torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=-1).flatten(-2)  # [..., n, F]
    return enc.flatten(-2)


def token_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Centres (x, y) of an height×width token grid, normalised to 0..1, row-major: [height·width, 2]."""
    ys = (torch.arange(height, dtype=torch.float32, device=device) + 0.5) / height
    xs = (torch.arange(width, dtype=torch.float32, device=device) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack((grid_x.flatten(), grid_y.flatten()), dim=1)


def gaussian_attention_bias(ref: torch.Tensor, centres: torch.Tensor, min_sigma: float) -> torch.Tensor:
    """SMCA log-prior: ref boxes [B, Q, 4] cxcywh normalised, token centres [T, 2] → additive logits [B, Q, T].

    bias_qt = −½ ((x_t − cx_q) / σx)² − ½ ((y_t − cy_q) / σy)², σ = max(box side / 2, min_sigma).
    """
    sigma = (ref[..., 2:] / 2).clamp(min=min_sigma)  # [B, Q, 2]
    offset = (centres[None, None] - ref[..., None, :2]) / sigma[..., None, :]  # [B, Q, T, 2]
    return -0.5 * offset.square().sum(-1)


class EncoderLayer(nn.Module):
    """Post-norm self-attention + FFN; the position is added to queries and keys, not values (DETR)."""

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, d_model))
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """src [B, T, d], pos [T, d] → [B, T, d]."""
        qk = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(qk, qk, src, need_weights=False)[0]))
        return self.norm2(src + self.dropout(self.ffn(src)))


class BiasedAttention(nn.Module):
    """Multi-head attention softmax(q kᵀ / √d_head + bias) v, the bias [B, Q, T] shared by all heads.

    Equivalent to ``nn.MultiheadAttention`` with a float ``attn_mask``, written out because that route (and
    ``scaled_dot_product_attention`` with a mask) fails the ONNX export with a dynamic batch (torch 2.x).
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj, self.k_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)
        self.v_proj, self.out_proj = nn.Linear(d_model, d_model), nn.Linear(d_model, d_model)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
        """query [B, Q, d], key and value [B, T, d], bias [B, Q, T] or None → [B, Q, d]."""
        heads = self.num_heads
        q = self.q_proj(query).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, heads, Q, d/heads]
        k = self.k_proj(key).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, heads, T, d/heads]
        v = self.v_proj(value).unflatten(-1, (heads, -1)).transpose(1, 2)  # [B, heads, T, d/heads]
        logits = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5  # [B, heads, Q, T]
        if bias is not None:
            logits = logits + bias[:, None]
        weights = F.dropout(logits.softmax(-1), self.dropout, self.training)
        return self.out_proj((weights @ v).transpose(1, 2).flatten(2))  # [B, Q, d]


class DecoderLayer(nn.Module):
    """Post-norm query self-attention, cross-attention to the memory, FFN (DETR's decoder layer).

    ``attn_bias`` ([B, Q, T] or None) is added to the cross-attention logits of every head (the spatial prior).
    """

    def __init__(self, d_model: int, num_heads: int, dim_feedforward: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, num_heads, dropout=dropout, batch_first=True)
        self.cross_attn = BiasedAttention(d_model, num_heads, dropout)
        self.ffn = nn.Sequential(nn.Linear(d_model, dim_feedforward), nn.ReLU(inplace=True), nn.Dropout(dropout),
                                 nn.Linear(dim_feedforward, d_model))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor, pos: torch.Tensor, query_pos: torch.Tensor,
                attn_bias: torch.Tensor | None = None) -> torch.Tensor:
        """tgt [B, Q, d], memory [B, T, d], pos [T, d], query_pos [Q, d] or [B, Q, d] → [B, Q, d]."""
        qk = tgt + query_pos
        tgt = self.norm1(tgt + self.dropout(self.self_attn(qk, qk, tgt, need_weights=False)[0]))
        attended = self.cross_attn(tgt + query_pos, memory + pos, memory, attn_bias)
        tgt = self.norm2(tgt + self.dropout(attended))
        return self.norm3(tgt + self.dropout(self.ffn(tgt)))


class DETRDetector(nn.Module):
    """DETR for inputs whose sides are multiples of the stride (see the module docstring)."""

    uses_nms = False
    QUERY_MODES = ("learned", "anchors", "encoder")

    def __init__(self, *, num_classes: int, mean: list[float], std: list[float], width: int = 16,
                 backbone_stages: int = 4, d_model: int = 128, num_heads: int = 4, num_encoder_layers: int = 2,
                 num_decoder_layers: int = 3, dim_feedforward: int = 256, dropout: float = 0.0,
                 num_queries: int = 16, queries: str = "encoder", backbone: str | None = None,
                 backbone_weights: str | None = None) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes} must be ≥ 1")
        if num_decoder_layers < 1:
            raise ValueError(f"num_decoder_layers={num_decoder_layers} must be ≥ 1")
        if d_model % num_heads or d_model % 8:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads} and by 8")
        if queries not in self.QUERY_MODES:
            raise ValueError(f"queries={queries!r}: expected one of {self.QUERY_MODES}")
        self.num_classes, self.num_queries, self.queries = num_classes, num_queries, queries
        self.stride = 2 ** backbone_stages  # stem stride 2, then each stage after the first halves
        self.backbone = build_backbone(backbone, backbone_weights, (self.stride,))
        if self.backbone is not None:
            self.normalize: Normalize = input_normalize(backbone, mean, std)
            trunk_channels = self.backbone.channels[0]
        else:
            trunk = SmallResNet(num_classes=1, mean=mean, std=std, width=width, num_stages=backbone_stages,
                                stem_stride=2)
            self.normalize = trunk.normalize
            self.stem, self.stages = trunk.stem, trunk.stages  # the classifier's names (its head is dropped)
            trunk_channels = width * 2 ** (backbone_stages - 1)
        self.input_proj = nn.Conv2d(trunk_channels, d_model, kernel_size=1)
        self.encoder = nn.ModuleList(EncoderLayer(d_model, num_heads, dim_feedforward, dropout)
                                     for _ in range(num_encoder_layers))
        self.decoder = nn.ModuleList(DecoderLayer(d_model, num_heads, dim_feedforward, dropout)
                                     for _ in range(num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        if queries == "learned":
            self.query_embed = nn.Embedding(num_queries, d_model)
        else:
            self.ref_pos_head = MLP(d_model, [d_model, d_model], activation_layer=nn.ReLU)
        if queries == "anchors":
            self.anchors = nn.Embedding(num_queries, 4)  # cxcywh before the sigmoid
        if queries == "encoder":
            self.enc_class_head = nn.Linear(d_model, num_classes + 1)
            self.enc_box_head = MLP(d_model, [d_model, d_model, 4], activation_layer=nn.ReLU)
        self.class_head = nn.Linear(d_model, num_classes + 1)
        self.box_head = MLP(d_model, [d_model, d_model, 4], activation_layer=nn.ReLU)
        for layer in [*self.encoder, *self.decoder]:
            for p in layer.parameters():
                if p.dim() > 1:
                    nn.init.xavier_uniform_(p)  # DETR's transformer init
        if queries == "anchors":
            with torch.no_grad():  # centres spread over the image, sides a quarter of it (refined per layer)
                self.anchors.weight[:, :2].uniform_(0.05, 0.95)
                self.anchors.weight[:, 2:].fill_(0.25)
                self.anchors.weight.copy_(torch.logit(self.anchors.weight))
        if queries != "learned":
            nn.init.zeros_(self.box_head[-2].weight)  # refinement starts as the identity: b = r
            nn.init.zeros_(self.box_head[-2].bias)

    def _select_queries(self, memory: torch.Tensor, centres: torch.Tensor, feat_hw: tuple[int, int]
                        ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Two-stage query selection: every memory token predicts a class and a box around itself; the Q tokens
        with the highest foreground probability give the decoder's content (their features) and reference
        boxes. memory [B, T, d], centres [T, 2] → tgt [B, Q, d], ref [B, Q, 4], {"enc_logits", "enc_boxes"}."""
        if self.num_queries > memory.shape[1]:
            raise ValueError(f"num_queries={self.num_queries} exceeds the {memory.shape[1]} memory tokens")
        sides = centres.new_tensor([min(2.0 / feat_hw[1], 0.5), min(2.0 / feat_hw[0], 0.5)])  # two tokens
        token_boxes = torch.cat((centres, sides.expand_as(centres)), dim=1)  # [T, 4] cxcywh
        enc_logits = self.enc_class_head(memory)  # [B, T, K+1]
        enc_boxes = (self.enc_box_head(memory) + torch.logit(token_boxes)).sigmoid()  # [B, T, 4]
        foreground = enc_logits.softmax(-1)[..., :-1].amax(-1)  # [B, T]
        index = foreground.topk(self.num_queries, dim=1).indices[..., None]  # [B, Q, 1]
        ref = enc_boxes.gather(1, index.expand(-1, -1, 4)).detach()  # [B, Q, 4]
        tgt = memory.gather(1, index.expand(-1, -1, memory.shape[2])).detach()  # [B, Q, d]
        return tgt, ref, {"enc_logits": enc_logits, "enc_boxes": enc_boxes}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images float32 [B, 3, H, W] in 0..255 → the dict described in the module docstring."""
        height, width = images.shape[-2:]
        if self.backbone is not None:
            trunk = self.backbone(self.normalize(images))[0]  # [B, C, H/s, W/s]
        else:
            trunk = self.stages(self.stem(self.normalize(images)))
        features = self.input_proj(trunk)  # [B, d, H/s, W/s]
        feat_h, feat_w, d_model = features.shape[-2], features.shape[-1], features.shape[1]
        centres = token_centres(feat_h, feat_w, device=images.device)  # [T, 2] (x, y)
        pos = sine_encoding(centres.flip(-1), d_model // 2).to(features.dtype)  # [T, d]: y block, then x block
        memory = features.flatten(2).transpose(1, 2)  # [B, T, d]
        for layer in self.encoder:
            memory = layer(memory, pos)
        batch, extra = memory.shape[0], {}
        tgt = torch.zeros(batch, self.num_queries, d_model, dtype=memory.dtype, device=memory.device)  # [B, Q, d]
        ref = None
        if self.queries == "anchors":
            ref = self.anchors.weight.sigmoid()[None].expand(batch, -1, -1)  # [B, Q, 4]
        elif self.queries == "encoder":
            tgt, ref, extra = self._select_queries(memory, centres, (feat_h, feat_w))
        logits, boxes = [], []
        for layer in self.decoder:
            if ref is None:
                tgt = layer(tgt, memory, pos, self.query_embed.weight.to(memory.dtype))
            else:
                query_pos = self.ref_pos_head(sine_encoding(ref, d_model // 4).to(memory.dtype))  # [B, Q, d]
                bias = gaussian_attention_bias(ref, centres, min_sigma=1.0 / max(feat_h, feat_w))  # [B, Q, T]
                tgt = layer(tgt, memory, pos, query_pos, bias.to(memory.dtype))
            hidden = self.decoder_norm(tgt)  # [B, Q, d]
            delta = self.box_head(hidden)  # [B, Q, 4]
            if ref is None:
                box = delta.sigmoid()
            else:
                box = (delta + torch.logit(ref, eps=1e-5)).sigmoid()
                ref = box.detach()
            logits.append(self.class_head(hidden))
            boxes.append(box)
        all_logits, all_boxes = torch.stack(logits), torch.stack(boxes)  # [L, B, Q, K+1], [L, B, Q, 4]
        whwh = torch.tensor([width, height, width, height], dtype=torch.float32, device=images.device)
        return {"pred_logits": all_logits[-1], "pred_boxes": all_boxes[-1], "aux_logits": all_logits[:-1],
                "aux_boxes": all_boxes[:-1], "image_whwh": whwh, **extra}

    def decode(self, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """→ boxes [B, Q, 4] xyxy absolute pixels (clipped to the image), scores [B, Q, K] (softmax over K+1,
        "no object" dropped)."""
        whwh = outputs["image_whwh"]
        boxes = torch.minimum(box_convert(outputs["pred_boxes"].float(), "cxcywh", "xyxy").clamp(min=0) * whwh, whwh)
        scores = outputs["pred_logits"].float().softmax(-1)[..., :-1]
        return boxes, scores


def build_detr(num_classes: int, mean: list[float], std: list[float], *, scale: str | None = None,
               width: int | None = None, backbone_stages: int = 4, d_model: int | None = None,
               num_heads: int | None = None, num_encoder_layers: int | None = None,
               num_decoder_layers: int | None = None, dim_feedforward: int | None = None, dropout: float = 0.0,
               num_queries: int = 16, queries: str = "encoder", backbone: str | None = None,
               backbone_weights: str | None = None) -> DETRDetector:
    """DETR with random init; the CNN width and the transformer's sizes from the ``scale`` preset
    (:mod:`cvpipe.models.scales`; default ``n``: 16, d_model 128, 4 heads, 2 + 3 layers, feed-forward 256) where
    not given."""
    size = scaled("detr", scale, width=width, d_model=d_model, num_heads=num_heads,
                  num_encoder_layers=num_encoder_layers, num_decoder_layers=num_decoder_layers,
                  dim_feedforward=dim_feedforward)
    return DETRDetector(num_classes=num_classes, mean=mean, std=std, backbone_stages=backbone_stages,
                        dropout=dropout, num_queries=num_queries, queries=queries, backbone=backbone,
                        backbone_weights=backbone_weights, **size)
