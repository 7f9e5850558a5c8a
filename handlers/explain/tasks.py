"""What each task attributes to, and against which baseline.

* text: the token embeddings (Layer Integrated Gradients), against the same text with every token but the special
  ones ([CLS], [SEP]) replaced by padding (RoBERTa-style models: the unknown token); token scores are summed into
  the words the tokenizer cut them from;
* image: the pixels the network sees, against a blank image (0 before standardisation); a heat map per row, summed
  over colour channels, optionally as a PNG overlay;
* tabular: the standardised features, against the training mean (0 after standardisation; a category's one-hot
  columns all 0); one score per feature in the user's names, a category's columns summed.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import torch
from captum.attr import IntegratedGradients, LayerIntegratedGradients
from PIL import Image

from handlers.explain.core import Explainer, ExplainOptions, ExplanationUnavailable

PNG_SIDE = 224  # the heat map picture's longer side, in pixels


class TextExplainer(Explainer):
    def __init__(self, pipeline):
        super().__init__(pipeline)
        embeddings = getattr(getattr(self.module, "model", None), "get_input_embeddings", None)
        if embeddings is None:
            raise ExplanationUnavailable(f"{pipeline.manifest.name}: its network exposes no token embeddings to "
                                         "attribute on (explanations need the Hugging Face weights)")  # fmt: skip
        self.attribution = LayerIntegratedGradients(self.forward, embeddings())
        self.tokenizer = pipeline.tokenizer
        self.special = set(self.tokenizer.all_special_ids)
        # The reference token: padding, unless the model numbers positions by counting non-padding tokens (the
        # RoBERTa family): there a padded baseline would move every position, and completeness would not hold.
        counts_padding = hasattr(getattr(self.module.model.base_model, "embeddings", None), "padding_idx")
        unknown = self.tokenizer.unk_token_id
        self.reference = unknown if counts_padding and unknown is not None else pipeline.pad_id

    def explain_rows(self, rows: list[Any], features: list[Any], options: ExplainOptions) -> list[dict]:
        return [self.explain_text(self.pipeline.validate_text(row), options) for row in rows]

    def explain_text(self, text: str, options: ExplainOptions) -> dict:
        encoding = self.tokenizer(text, truncation=True, max_length=self.pipeline.max_length,
                                  return_offsets_mapping=True)  # fmt: skip
        ids = encoding["input_ids"]
        device = self.pipeline.device
        inputs = torch.tensor([ids], device=device)
        baseline = torch.tensor([[i if i in self.special else self.reference for i in ids]], device=device)
        mask = torch.ones_like(inputs)
        with torch.no_grad():
            outputs, baseline_outputs = self.forward(inputs, mask)[0], self.forward(baseline, mask)[0]
        target = self.target_index(options.target, outputs)
        attributions, deltas = self.integrate(self.attribution, inputs, baseline, [target], options.steps,
                                              additional_forward_args=(mask,))  # fmt: skip
        scores = attributions.sum(dim=-1)[0].tolist()
        tokens = self.tokenizer.convert_ids_to_tokens(ids)
        return {**self.answer(outputs, baseline_outputs, target, deltas[0], options),
                "attributions": words(text, encoding, scores),
                "tokens": [{"token": t, "score": s} for t, s in zip(tokens, scores, strict=True)]}  # fmt: skip


def words(text: str, encoding, scores: list[float]) -> list[dict]:
    """Token scores summed per word of ``text`` (WordPiece ``##`` pieces or BPE pieces back into their word);
    special tokens belong to no word. A slow tokenizer has no word map: its tokens are the words."""
    try:
        word_ids = encoding.word_ids()
    except (ValueError, AttributeError):
        return [{"word": t, "score": s} for t, s in zip(encoding["input_ids"], scores, strict=True)]
    merged: dict[int, list] = {}
    for word, (start, end), score in zip(word_ids, encoding["offset_mapping"], scores, strict=True):
        if word is None:
            continue
        span = merged.setdefault(word, [start, end, 0.0])
        span[1] = end
        span[2] += score
    return [{"word": text[start:end], "start": start, "end": end, "score": score}
            for start, end, score in merged.values()]  # fmt: skip


class ImageExplainer(Explainer):
    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.attribution = IntegratedGradients(self.forward)

    def explain_rows(self, rows: list[Any], features: list[Any], options: ExplainOptions) -> list[dict]:
        pipeline = self.pipeline
        pixels = pipeline.collate(features)["pixels"]
        blank = torch.from_numpy((0.0 - pipeline.mean) / pipeline.std).to(pixels).expand_as(pixels).contiguous()
        with torch.no_grad():
            outputs, baseline_outputs = self.forward(pixels), self.forward(blank)
        targets = [self.target_index(options.target, row) for row in outputs]
        attributions, deltas = self.integrate(self.attribution, pixels, blank, targets, options.steps)
        heat = attributions.sum(dim=1).cpu().numpy()  # [rows, height, width]: the channels of a pixel together
        answers = []
        for i, target in enumerate(targets):
            answer = {**self.answer(outputs[i], baseline_outputs[i], target, deltas[i], options),
                      "attributions": heat[i].tolist(), "shape": list(heat[i].shape)}  # fmt: skip
            if options.png:
                seen = (pixels[i].cpu().numpy() * pipeline.std + pipeline.mean).mean(axis=0)
                answer["png"] = heat_map_png(seen, heat[i])
            answers.append(answer)
        return answers


def heat_map_png(image: np.ndarray, heat: np.ndarray) -> str:
    """Base64 PNG: the input in grey with the attributions over it, red where they raise the explained output
    and blue where they lower it, stronger where larger; scaled up (nearest) to ``PNG_SIDE``."""
    grey = np.clip(image, 0.0, 1.0) * 255.0
    strength = np.abs(heat) / max(float(np.abs(heat).max()), 1e-12)
    colour = np.where(heat[..., None] >= 0, [255.0, 0.0, 0.0], [0.0, 64.0, 255.0])
    alpha = 0.75 * strength[..., None]
    rgb = (1 - alpha) * grey[..., None] + alpha * colour
    picture = Image.fromarray(rgb.astype(np.uint8), "RGB")
    scale = max(1, PNG_SIDE // max(picture.size))
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return base64.b64encode(out.getvalue()).decode()


class TabularExplainer(Explainer):
    def __init__(self, pipeline):
        super().__init__(pipeline)
        self.attribution = IntegratedGradients(self.forward)
        schema = pipeline.schema
        self.widths = [len(schema.categories[i]) if i in schema.categories else 1 for i in range(len(schema))]

    def explain_rows(self, rows: list[Any], features: list[Any], options: ExplainOptions) -> list[dict]:
        inputs = self.pipeline.collate(features)["features"]
        baseline = torch.zeros_like(inputs)
        with torch.no_grad():
            outputs, baseline_outputs = self.forward(inputs), self.forward(baseline)
        targets = [self.target_index(options.target, row) for row in outputs]
        attributions, deltas = self.integrate(self.attribution, inputs, baseline, targets, options.steps)
        columns = attributions.cpu().numpy()
        ends = np.cumsum(self.widths)
        answers = []
        for i, target in enumerate(targets):
            scores = [float(columns[i, end - width : end].sum()) for end, width in zip(ends, self.widths, strict=True)]
            answers.append({**self.answer(outputs[i], baseline_outputs[i], target, deltas[i], options),
                            "attributions": self.named(features[i], scores)})  # fmt: skip
        return answers

    def named(self, raw: np.ndarray, scores: list[float]) -> list[dict]:
        """Per feature: its name, the value sent (a category by name), its score; in schema order."""
        schema = self.pipeline.schema
        named = []
        for i, (name, score) in enumerate(zip(schema.names, scores, strict=True)):
            value: Any = float(raw[i])
            if i in schema.categories:
                value = schema.categories[i][int(value)] if value >= 0 else None
            named.append({"feature": name, "value": value, "score": score})
        return named
