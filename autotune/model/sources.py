"""Where a study's model comes from, and what production adds to it.

``[model] id`` is ``"micro"`` or ``"glyphs"`` (shipped), ``"tiny"`` (built in code), a diffusers folder, a
single-file checkpoint (``.safetensors``/``.ckpt``, what A1111 and ComfyUI load; its components'
configs come from ``model.config``, a diffusers folder or hub id of the same architecture), or a
hub id (loaded from the local cache when it is there; one line within seconds when it is not and
the hub cannot be reached). Paths are relative to the study file. ``model.pipeline =
"package.module:function"`` builds the team's own pipeline instead; ``vae`` and ``loras`` are
applied to whichever pipeline loads.

Example:
    >>> pipe = build(ModelConfig(id="./models/dreamshaper_8.safetensors", config="./models/sd15"), torch.float32, {})
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from autotune.config import ConfigError, ModelConfig, StudyConfig
from autotune.config.tables import WEIGHT_FILES, first_line, local_weights
from autotune.space import families
from autotune.weights.net import hub_unreachable

__all__ = ["build", "guidance_embedded", "hub_error", "located", "model_index", "source", "weights_digest"]


def hub_error(key: str, repo: str) -> ConfigError | None:
    """The one-line error for a hub id that is not in the local cache when the hub is unreachable."""
    from huggingface_hub import try_to_load_from_cache

    why = None if isinstance(try_to_load_from_cache(repo, "model_index.json"), str) else hub_unreachable()
    if why is None:
        return None
    return ConfigError(
        f"{key}: {repo!r} is not in the local Hugging Face cache and {why}: download it on a "
        f"connected machine (`hf download {repo}`) or point {key} at a local folder or .safetensors file"
    )


def source(model: ModelConfig) -> str | Path:
    """Where the weights are: the shipped micro model's folder, a built tiny model's, a local
    folder or file, or a hub id (checked: cached, or the hub reachable)."""
    from autotune.micro import MODELS, pipeline_dir

    if model.id in MODELS:
        return pipeline_dir(model.id)
    if model.id.startswith("tiny"):
        from autotune.testing.tiny import TINY_MODELS, tiny_pipeline_path

        try:
            return tiny_pipeline_path(model.id)
        except KeyError:
            raise ConfigError(
                f"model.id: no tiny model {model.id!r} (expected one of: {', '.join(TINY_MODELS)})"
            ) from None
    return _weights("model.id", model.id, model.home)


def located(cfg: StudyConfig) -> StudyConfig:
    """``cfg``, once its model's weights are found (a folder, a file, or a hub id cached or in reach);
    no torch is imported, so a missing model is said within a second."""
    try:
        if not cfg.model.pipeline:
            source(cfg.model)
    except ConfigError as e:
        raise ConfigError(f"{cfg.path}: {e}") from None
    return cfg


def _weights(key: str, value: str, home: str) -> str | Path:
    path = local_weights(key, value, home)
    if path is None:
        if (error := hub_error(key, value)) is not None:
            raise error
        return value
    return path


def _offline(where: str | Path) -> bool:
    """A hub id with the hub out of reach loads from the local cache alone (instead of half a minute of retries)."""
    return isinstance(where, str) and hub_unreachable() is not None


def single_file(model: ModelConfig) -> Path | None:
    """The checkpoint file when ``model.id`` names one."""
    src = source(model) if not model.pipeline else None
    return src if isinstance(src, Path) and src.is_file() else None


def _config_source(model: ModelConfig) -> str | Path:
    """Where a single file's component configs come from: ``model.config``, else the hub repo of the
    architecture diffusers recognises in the checkpoint (from the cache when the hub is out of reach)."""
    if model.config is not None:
        return _weights("model.config", model.config, model.home)
    path = single_file(model)
    assert path is not None
    repo = _architecture(path)
    if hub_error("model.config", repo) is not None:
        raise ConfigError(
            f"model.config: the checkpoint is a {repo} model, whose component configs are not in the local cache "
            f"and {hub_unreachable()}: set model.config to a diffusers folder of the same architecture (the "
            "JSON files are enough, no weights)"
        )
    return repo


@functools.cache
def _architecture(path: Path) -> str:
    from diffusers.loaders.single_file_utils import fetch_diffusers_config, load_single_file_checkpoint

    try:
        return str(fetch_diffusers_config(load_single_file_checkpoint(str(path)))["pretrained_model_name_or_path"])
    except Exception as e:  # a file that is no checkpoint: whatever the reader raises, one line
        raise ConfigError(f"model.id: cannot read {str(path)!r} as a checkpoint: {first_line(e)}") from None


def hook(model: ModelConfig) -> Any:
    """The function ``model.pipeline`` names, imported with the study file's folder on ``sys.path``."""
    assert model.pipeline is not None
    module_name, _, function = model.pipeline.partition(":")
    if not module_name or not function:
        raise ConfigError(f"model.pipeline: expected 'package.module:function', got {model.pipeline!r}")
    if model.home and model.home not in sys.path:
        sys.path.insert(0, model.home)
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # whatever the team's module raises on import: one line
        raise ConfigError(f"model.pipeline: cannot import {module_name!r}: {first_line(e)}") from None
    fn = getattr(module, function, None)
    if not callable(fn):
        raise ConfigError(f"model.pipeline: {module_name!r} has no function {function!r}")
    return fn


def hooked(model: ModelConfig, dtype: Any) -> Any:
    """The pipeline the team's function returns, called as ``fn(model_id=, dtype=)``: once per load, by
    :func:`model_index`, whose caller hands it to :func:`build`."""
    try:
        pipe = hook(model)(model_id=str(source(model)), dtype=dtype)
    except ConfigError:
        raise
    except Exception as e:  # the team's function failing: one line
        raise ConfigError(f"model.pipeline: {model.pipeline} failed: {first_line(e)}") from None
    if not hasattr(pipe, "scheduler") or not callable(pipe):
        raise ConfigError(
            f"model.pipeline: {model.pipeline} returned {type(pipe).__name__}, expected a diffusers pipeline"
        )
    return pipe


def model_index(model: ModelConfig, dtype: Any) -> tuple[dict[str, Any], Any]:
    """Pipeline and component classes (``model_index.json``), without loading weights where possible,
    and the pipeline a ``model.pipeline`` function built to describe it (None for every other source)."""
    from diffusers import DiffusionPipeline

    if model.pipeline:
        pipe = hooked(model, dtype)
        return {"_class_name": type(pipe).__name__, "scheduler": ["diffusers", type(pipe.scheduler).__name__]}, pipe
    where = _config_source(model) if single_file(model) else source(model)
    try:
        index = DiffusionPipeline.load_config(where, revision=model.revision, local_files_only=_offline(where))
    except (OSError, ValueError) as e:
        key = "model.config" if single_file(model) else "model.id"
        raise ConfigError(f"{key}: cannot read the model's configs at {str(where)!r}: {first_line(e)}") from None
    return dict(index), None


def guidance_embedded(model: ModelConfig, index: dict[str, Any], built: Any = None) -> bool:
    """Whether a Flux transformer embeds guidance (``guidance_embeds``: Flux dev, guidance-distilled) or
    is guided with true CFG, read from its config without weights (True for every other layout, and where
    the config cannot be read: the model then fails to load with its own message)."""
    if built is not None:
        return families.guidance_embedded(built)
    if (index.get("transformer") or [None, None])[1] != "FluxTransformer2DModel":
        return True
    from diffusers import FluxTransformer2DModel

    where = _config_source(model) if single_file(model) else source(model)
    try:
        config = FluxTransformer2DModel.load_config(
            where, subfolder="transformer", revision=model.revision, local_files_only=_offline(where)
        )
    except (OSError, ValueError):
        return True
    return bool(config.get("guidance_embeds", True))


def build(model: ModelConfig, dtype: Any, components: dict[str, Any], index: dict[str, Any], built: Any = None) -> Any:
    """The pipeline, with ``components`` overriding the model's own (``None`` leaves one out), the
    study's VAE and its LoRAs at their scales. ``index`` and ``built`` are what :func:`model_index` said
    (the model's ``model_index.json``, and the pipeline a ``model.pipeline`` function returned)."""
    import diffusers

    if model.vae:
        components = {**components, "vae": _vae(model, dtype)}
    try:
        if model.pipeline:
            pipe = built if built is not None else hooked(model, dtype)
            for name, value in components.items():
                if name == "vae":
                    pipe.vae = value
        elif (path := single_file(model)) is not None:
            cls = getattr(diffusers, index["_class_name"])
            config = _config_source(model)
            pipe = cls.from_single_file(
                str(path), config=str(config), torch_dtype=dtype, local_files_only=_offline(config), **components
            )
        else:
            where = source(model)
            pipe = diffusers.DiffusionPipeline.from_pretrained(
                where,
                dtype=dtype,
                use_safetensors=True,
                revision=model.revision,
                local_files_only=_offline(where),
                **components,
            )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"model.id: cannot load {model.id!r}: {first_line(e)}") from None
    for i, lora in enumerate(model.loras):
        _lora(pipe, model, i, lora)
    if model.loras:
        pipe.set_adapters([f"lora{i}" for i in range(len(model.loras))], adapter_weights=list(model.loras.values()))
    return pipe


def _vae(model: ModelConfig, dtype: Any) -> Any:
    from diffusers import AutoencoderKL

    assert model.vae is not None
    where = _weights("model.vae", model.vae, model.home)
    try:
        if isinstance(where, Path) and where.is_file():
            return AutoencoderKL.from_single_file(str(where), torch_dtype=dtype)
        sub = "vae" if isinstance(where, Path) and (where / "vae").is_dir() else None
        return AutoencoderKL.from_pretrained(where, subfolder=sub, torch_dtype=dtype, local_files_only=_offline(where))
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ConfigError(f"model.vae: cannot load {model.vae!r}: {first_line(e)}") from None


def _lora(pipe: Any, model: ModelConfig, i: int, value: str) -> None:
    where = _weights(f"model.loras.{value}", value, model.home)
    try:
        pipe.load_lora_weights(str(where), adapter_name=f"lora{i}", local_files_only=_offline(where))
    except (OSError, ValueError, KeyError, RuntimeError, TypeError) as e:
        raise ConfigError(f"model.loras.{value}: cannot load it as a LoRA of this pipeline: {first_line(e)}") from None


def _digest_file(path: Path, memo: dict[str, Any]) -> str:
    """sha256 of a file's bytes, remembered by its path, size and modification time."""
    st = path.stat()
    key = f"{path}:{st.st_size}:{st.st_mtime_ns}"
    if key not in memo:
        h = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                h.update(chunk)
        memo[key] = h.hexdigest()
    return str(memo[key])


def _weight_files(where: Path) -> list[Path]:
    if where.is_file():
        return [where]
    return sorted(p for p in where.rglob("*") if p.suffix in WEIGHT_FILES and p.is_file())


def _hub_commit(repo: str, revision: str | None) -> str | None:
    """The commit of a hub model's cached snapshot (what loaded), or None when it is not cached."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, "model_index.json", revision=revision)
    return Path(found).parent.name if isinstance(found, str) else None


def weights_digest(model: ModelConfig) -> str | None:
    """A digest of the weights a study renders with: every weight file of a local folder or single file
    (the shipped micro model, a built tiny one, the VAE and LoRA files), a hub model's cached commit.
    None for a model built by a ``model.pipeline`` function (its weights are its own business).

    Hashing reads every byte once per file version: the hashes are kept in ``$AUTOTUNE_CACHE``
    (``digests.json``) by path, size and modification time, so an unchanged model costs nothing.
    """
    if model.pipeline:
        return None
    from autotune.testing.tiny import cache_dir

    memo_path = cache_dir() / "digests.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    found: list[tuple[str, str | Path]] = [("model.id", source(model))]
    if model.vae:
        found.append(("model.vae", _weights("model.vae", model.vae, model.home)))
    found += [(f"model.loras.{k}", _weights(f"model.loras.{k}", k, model.home)) for k in model.loras]
    parts = []
    for key, where in found:
        if isinstance(where, str):
            parts.append(f"{key}={where}@{_hub_commit(where, model.revision if key == 'model.id' else None)}")
        else:
            files = _weight_files(where)
            root = where if where.is_dir() else where.parent
            parts += [f"{key}:{f.relative_to(root)}={_digest_file(f, memo)}" for f in files]
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_name(f".digests.{os.getpid()}.json")
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        os.replace(tmp, memo_path)
    except OSError:
        pass  # a read-only cache only costs the hashing again
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
