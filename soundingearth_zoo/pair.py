"""The two towers of one run and their audio front end as one object, for cross-modal retrieval.

``AudioVisualPair.from_pretrained("soundingearth_resnet18.batch_triplet")`` loads the image tower, its audio partner
(``models.audio_partner``) and the front end that was saved with the audio weight. Images are preprocessed with the
image tower's own ``pretrained_cfg`` through ``timm.data``; a whole audio clip is embedded as the mean of the
embeddings of its 128-frame windows (at most ``FrontendConfig.max_windows``, evenly spread), as the reference code
pooled them. Both towers were trained to put a place's image and sound close in Euclidean distance, so
``similarity`` is the negative L2 distance.
"""
from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import timm
import torch
from huggingface_hub import try_to_load_from_cache
from PIL import Image
from safetensors import SafetensorError
from torch import nn

from .audio import FrontendConfig, LogMel, frame_windows, read_frontend, read_windows
from .errors import InputError
from .images import eval_transform, load_image
from .models import IMAGE_MODELS, audio_partner, check_model_name

__all__ = ["AudioVisualPair", "create_tower", "encode_clips", "tower_frontend"]

PathLike = str | os.PathLike
ImageInput = torch.Tensor | PathLike | Image.Image | Sequence[PathLike | Image.Image]
AudioInput = torch.Tensor | PathLike | Sequence[PathLike]


def create_tower(name: str, pretrained: bool = True, weights: PathLike | None = None) -> nn.Module:
    """A registered tower (``name[.tag]``) with the Hub weight, a local weights file, or random initialisation."""
    check_model_name(name)
    if weights is None:
        return timm.create_model(name, pretrained=pretrained)
    if not Path(weights).is_file():
        raise InputError(f"weights file not found: {weights}")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": os.fspath(weights)})
    # keys or shapes that do not fit (RuntimeError), or not a weights file at all
    except (RuntimeError, ValueError, SafetensorError, pickle.UnpicklingError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{weights} does not hold weights of {name}: {reason}") from err


def tower_frontend(audio_tower: nn.Module, pretrained: bool = True, weights: PathLike | None = None) -> FrontendConfig:
    """The front end an audio tower was trained with: saved in its weights file (or the ``config.json`` beside
    it), else in the cached Hub weight it was loaded from; ``FrontendConfig()`` when none carries one."""
    if weights is not None:
        candidates = [Path(weights), Path(weights).with_name("config.json")]
    elif pretrained and audio_tower.pretrained_cfg.get("hf_hub_id"):
        repo_id = audio_tower.pretrained_cfg["hf_hub_id"]
        cached = (try_to_load_from_cache(repo_id, name) for name in ("model.safetensors", "config.json"))
        candidates = [Path(path) for path in cached if isinstance(path, str)]
    else:
        candidates = []
    for path in candidates:
        frontend = read_frontend(path) if path.is_file() else None
        if frontend is not None:
            return frontend
    return FrontendConfig()


def encode_clips(audio_tower: nn.Module, clips: Sequence[torch.Tensor], batch_size: int = 256) -> torch.Tensor:
    """One embedding per clip ``[N, D]``, the mean over its windows; ``clips`` are ``[W_i, 1, n_mels, frames]``
    window stacks, run through the tower ``batch_size`` windows at a time."""
    device = next(audio_tower.parameters()).device
    windows = torch.cat(list(clips)).to(device)
    embeddings = torch.cat([audio_tower(chunk).float() for chunk in windows.split(batch_size)])
    return torch.stack([clip.mean(dim=0) for clip in embeddings.split([len(c) for c in clips])])


class AudioVisualPair(nn.Module):
    """Image tower, audio tower and audio front end of one SoundingEarth run.

    ``encode_image`` takes preprocessed tensors ``[N, 3, H, W]`` (or one ``[3, H, W]``), or image paths / PIL
    images (one or a list), which it decodes and preprocesses itself. ``encode_audio`` takes log-mel windows
    ``[N, 1, n_mels, frames]`` (one embedding per window), mono waveforms at the front end's sample rate ``[T]``
    or ``[N, T]``, or audio paths (one or a list); a waveform or file is one clip, embedded as the mean of its
    windows. Both return ``[N, D]`` float32 embeddings. ``from_pretrained`` and ``from_checkpoint`` return the
    pair in eval mode.
    """

    def __init__(self, image: nn.Module, audio: nn.Module, frontend: FrontendConfig | None = None):
        super().__init__()
        self.image = image
        self.audio = audio
        self.frontend = LogMel(frontend)
        self.image_transform = eval_transform(image)

    @property
    def frontend_config(self) -> FrontendConfig:
        return self.frontend.cfg

    @property
    def device(self) -> torch.device:
        return next(self.image.parameters()).device

    def encode_image(self, images: ImageInput) -> torch.Tensor:
        if isinstance(images, torch.Tensor):
            batch = images if images.ndim == 4 else images.unsqueeze(0)
        else:
            items = [images] if isinstance(images, (str, os.PathLike, Image.Image)) else list(images)
            pils = [item.convert("RGB") if isinstance(item, Image.Image) else load_image(item) for item in items]
            batch = torch.stack([self.image_transform(pil) for pil in pils])
        return self.image(batch.to(self.device)).float()

    def encode_audio(self, audio: AudioInput, max_windows: int | None = None) -> torch.Tensor:
        """``max_windows`` caps the windows per clip (default ``frontend_config.max_windows``)."""
        cfg = self.frontend_config
        if isinstance(audio, torch.Tensor):
            if audio.ndim >= 3:  # log-mel windows
                windows = audio if audio.ndim == 4 else audio.unsqueeze(0)
                return self.audio(windows.to(self.device)).float()
            waveforms = audio.to(self.device).reshape(-1, audio.shape[-1])
            clips = [frame_windows(spec, cfg, max_windows) for spec in self.frontend(waveforms)]
        else:
            paths = [audio] if isinstance(audio, (str, os.PathLike)) else list(audio)
            clips = [read_windows(path, cfg, max_windows) for path in paths]
        return encode_clips(self.audio, clips)

    @staticmethod
    def similarity(image_embeddings: torch.Tensor, audio_embeddings: torch.Tensor) -> torch.Tensor:
        """``[N, M]`` negative Euclidean distances: higher is closer, as the towers were trained."""
        return -torch.cdist(image_embeddings.float(), audio_embeddings.float())

    def forward(self, images: torch.Tensor, windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of a training batch: preprocessed images and one log-mel window per sample."""
        return self.image(images), self.audio(windows)

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        pretrained: bool = True,
        image_weights: PathLike | None = None,
        audio_weights: PathLike | None = None,
    ) -> AudioVisualPair:
        """The pair of one run, named by its image tower (``soundingearth_resnet18.batch_triplet``; the tag
        defaults to the first objective). Local weights files replace the Hub weight of their tower."""
        if name.partition(".")[0] not in IMAGE_MODELS:
            raise InputError(f"{name!r} is not a SoundingEarth image tower; choose one of {sorted(IMAGE_MODELS)}")
        image = create_tower(name, pretrained, image_weights)
        audio = create_tower(audio_partner(name), pretrained, audio_weights)
        return cls(image, audio, tower_frontend(audio, pretrained, audio_weights)).eval()

    @classmethod
    def from_checkpoint(cls, path: PathLike) -> AudioVisualPair:
        """The pair of a training checkpoint (``checkpoint.py``), with the front end it was trained with."""
        from .checkpoint import load_checkpoint
        from .export import checkpoint_towers

        towers = checkpoint_towers(load_checkpoint(path))
        return cls(towers["image"].model, towers["audio"].model, towers["audio"].frontend).eval()
