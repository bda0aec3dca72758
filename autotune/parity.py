"""``autotune export --check``: the exported AUTOMATIC1111 and ComfyUI settings rendered as those tools
render them, judged by the study's own rule.

Both tools run their samplers through k-diffusion (crowsonkb's ``k_diffusion.sampling``; ComfyUI
through its fork of the same functions), on the model wrapped as k-diffusion wraps an SD model
(``CompVisDenoiser``: fractional timesteps in A1111, the nearest whole one in ComfyUI) with
guidance on the denoised outputs, and their own sigma schedules (the functions below follow
A1111's ``sd_schedulers.py`` and ComfyUI's ``comfy/samplers.py``). A1111 scales the first noise by
the first sigma, ComfyUI by sqrt(1 + sigma^2). Each class's recommendation and the baseline are
rendered so per tool on the class's prompts x fresh seeds, on the same initial noise as autotune's
diffusers render (the tools map a seed to other noise: A1111 draws it on the GPU, ComfyUI on the
CPU), and the recommendation qualifies in the tool when its one-sided bound against the tool's
baseline holds the study's tolerance. Where it does not, the nearest change that the check
measured to qualify (another schedule of the tool, or one step more) is named.

k-diffusion is the ``parity`` extra; only its ``sampling`` and ``external`` modules are used (its
training stack is not needed). Without it every verdict is ``not checked``.

Example:
    >>> result = check(cfg, load_recommendations("studies/demo.toml"))
    >>> result["classes"]["thin"]["comfyui"]["parity"]  # "fails" with its bounds, or "not checked" with why
    'qualifies'
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import math
import statistics
import sys
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from autotune.config import StudyConfig
from autotune.results.recommendations_file import DEFAULT_CLASS, ClassRecommendation, Recommendations
from autotune.space.guidance import guidance_on
from autotune.space.tools import TOOLS

__all__ = ["NOT_INSTALLED", "SEEDS", "check", "check_file", "k_diffusion", "tool_sigmas"]

SEEDS = (7000, 7001)  # fresh: no study, confirmation or validation default uses them
PROMPTS = 8  # the class's first prompts
NOT_INSTALLED = "k-diffusion is not installed (pip install 'autotune[parity]'), so it was not rendered"
AYS_SD15 = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029]  # A1111's list


def k_diffusion() -> tuple[Any, Any] | None:
    """k-diffusion's ``sampling`` and ``external`` modules, or None where it is not installed. Its package
    ``__init__`` imports its training stack (wandb, clean-fid, kornia...); where that fails, the two
    modules are loaded on their own."""
    if importlib.util.find_spec("k_diffusion") is None:
        return None
    try:
        import k_diffusion as k

        return k.sampling, k.external
    except ImportError:
        for name in [m for m in sys.modules if m == "k_diffusion" or m.startswith("k_diffusion.")]:
            del sys.modules[name]
    spec = importlib.util.find_spec("k_diffusion")
    assert spec is not None and spec.submodule_search_locations is not None
    package = types.ModuleType("k_diffusion")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["k_diffusion"] = package
    return importlib.import_module("k_diffusion.sampling"), importlib.import_module("k_diffusion.external")


def tool_sigmas(sampling: Any, model: Any, tool: str, sampler: str, schedule: str, steps: int) -> Any:
    """The sigmas ``tool`` samples ``steps`` with under ``schedule`` (its own name), or None if not known."""
    import numpy as np
    import scipy.stats
    import torch

    row = TOOLS[tool]
    if schedule == "Automatic":
        schedule = row.automatic.get(sampler, row.automatic_default)
    discard = sampler in row.discard_penultimate
    n = steps + discard
    lo, hi = float(model.sigmas[0]), float(model.sigmas[-1])
    name = schedule.lower().replace(" ", "_")
    table = model.sigmas  # ascending: the sigma at each training timestep
    if name == "karras":
        out = sampling.get_sigmas_karras(n, lo, hi)
    elif name == "exponential":
        out = sampling.get_sigmas_exponential(n, lo, hi)
    elif name in ("uniform", "normal"):
        out = model.get_sigmas(n)
    elif name == "sgm_uniform":
        ts = torch.linspace(float(model.sigma_to_t(torch.tensor(hi))), float(model.sigma_to_t(torch.tensor(lo))), n + 1)
        out = sampling.append_zero(model.t_to_sigma(ts[:-1]))
    elif name in ("ddim_uniform", "ddim"):  # every (1000 // n)-th training sigma from timestep 1
        out = sampling.append_zero(table[1 :: max(len(table) // n, 1)].flip(0))
    elif name == "beta" and tool == "comfyui":  # on the training timesteps
        ts = np.rint(scipy.stats.beta.ppf(1 - np.linspace(0, 1, n, endpoint=False), 0.6, 0.6) * (len(table) - 1))
        out = sampling.append_zero(table[[int(t) for t in dict.fromkeys(ts.tolist())]])
    elif name == "beta":  # A1111: between sigma_min and sigma_max
        ppf = scipy.stats.beta.ppf(1 - np.linspace(0, 1, n), 0.6, 0.6)
        out = torch.tensor([lo + float(x) * (hi - lo) for x in ppf] + [0.0])
    elif name == "align_your_steps" and tool == "a1111":
        xs, ys = np.linspace(0, 1, len(AYS_SD15)), np.log(AYS_SD15[::-1])
        out = torch.tensor([*np.exp(np.interp(np.linspace(0, 1, n), xs, ys))[::-1].tolist(), 0.0])
    else:
        return None
    out = out.float()
    return torch.cat([out[:-2], out[-1:]]) if discard else out


class _Inner:
    """What k-diffusion's CompVis wrappers take: ``alphas_cumprod`` and ``apply_model(x, t, cond)``."""

    def __init__(self, unet: Any, alphas_cumprod: Any) -> None:
        self.unet, self.alphas_cumprod = unet, alphas_cumprod

    def apply_model(self, x: Any, t: Any, cond: Any) -> Any:
        return self.unet(x.to(self.unet.dtype), t, encoder_hidden_states=cond).sample.float()


def render(p: Any, modules: tuple[Any, Any], tool: str, setting: tuple[str, str, int, float], prompts: Sequence[str],
           seeds: Sequence[int], height: int, width: int) -> Any:  # fmt: skip
    """Images (prompt-major over ``seeds``, as autotune renders them) of ``(sampler, schedule, steps,
    guidance)`` rendered as ``tool`` renders it; None if the check cannot render it."""
    import torch
    from diffusers import DDPMScheduler
    from diffusers.utils.torch_utils import randn_tensor

    from autotune.model.render import _embeddings, seeded

    sampling, external = modules
    sampler, schedule, steps, guidance = setting
    scheduler = DDPMScheduler.from_config(p.base_scheduler_config)
    v = scheduler.config.prediction_type == "v_prediction"
    wrapper = external.CompVisVDenoiser if v else external.CompVisDenoiser
    model = wrapper(_Inner(p.pipe.unet, scheduler.alphas_cumprod.to(p.device)), quantize=TOOLS[tool].quantized)
    fn = TOOLS[tool].parity_samplers.get(sampler)
    sigmas = tool_sigmas(sampling, model, tool, sampler, schedule, steps) if fn else None
    if sigmas is None:
        return None
    sigmas = sigmas.to(p.device)
    each = [q for q in prompts for _ in seeds]
    embeds = _embeddings(p, each)
    cond, uncond = embeds["prompt_embeds"], embeds["negative_prompt_embeds"]

    def denoise(x: Any, sigma: Any, **_: Any) -> Any:  # guidance on the denoised outputs, as both tools do
        if not guidance_on(guidance):
            return model(x, sigma, cond=cond)
        u, c = model(torch.cat([x, x]), torch.cat([sigma, sigma]), cond=torch.cat([uncond, cond])).chunk(2)
        return u + (c - u) * guidance

    scale = p.pipe.vae_scale_factor
    shape = (len(each), p.pipe.unet.config.in_channels, height // scale, width // scale)
    noise = randn_tensor(shape, seeded(p, each, [s for _ in prompts for s in seeds]), torch.device(p.device))
    first = float(sigmas[0])
    full = TOOLS[tool].noise_sqrt1p and math.isclose(first, float(model.sigmas[-1]), rel_tol=1e-5)
    with torch.no_grad():
        latents = getattr(sampling, f"sample_{fn}")(
            denoise, noise * (math.sqrt(1 + first**2) if full else first), sigmas, disable=True
        )
        vae = p.pipe.vae
        image = vae.decode((latents / vae.config.scaling_factor).to(vae.dtype), return_dict=False)[0]
        images = p.pipe.image_processor.postprocess(image, output_type="pt").float().cpu()
    return (images * 255).round() / 255


class _Class:
    """One class's check: its prompts and seeds, the tool renders scored as the study scores them."""

    def __init__(self, evaluator: Any, resolved: Any, recs: Recommendations, c: str, modules: Any, n: int,
                 seeds: Sequence[int]) -> None:  # fmt: skip
        self.evaluator, self.resolved, self.recs, self.c, self.modules = evaluator, resolved, recs, c, modules
        self.prompts, self.seeds = list(resolved.classes[c])[:n], list(seeds)

    def of(self, tool: str, sampler: str | None, schedule: str | None, steps: int, guidance: float) -> Any:
        """``(images, per-image metrics)`` of the setting rendered as ``tool`` renders it, or None."""
        if sampler is None or schedule is None:
            return None
        m, ps = self.resolved.model, self.prompts
        setting = (sampler, schedule, steps, guidance)
        images = render(self.evaluator.pipeline, self.modules, tool, setting, ps, self.seeds, m.height, m.width)
        return None if images is None else (images, self.evaluator.score(images, ps, self.seeds, guidance))

    def judge(
        self, mine: dict[str, list[float]], base: dict[str, list[float]]
    ) -> tuple[str, dict[str, Any], list[str]]:
        """The study's rule on the tool's renders: ``qualifies`` or ``fails``, the bounds, why not."""
        from autotune.decision.evidence import Candidate, images_of
        from autotune.decision.rule import overall, verdicts
        from autotune.validate import class_tolerance

        n = len(self.prompts)
        a, b = Candidate(1, images_of(mine, n, self.seeds)), Candidate(0, images_of(base, n, self.seeds))
        bounds = verdicts(a, b, class_tolerance(self.resolved, self.recs, self.c, b))
        kept = {x.metric: {"mean": x.mean, "worst": x.worst, "tolerance": x.tolerance} for x in bounds}
        verdict = "qualifies" if overall(bounds) == "pass" else "fails"
        return verdict, kept, [x.describe() for x in bounds if x.verdict != "pass"]

    def change(self, tool: str, sampler: Any, schedule: Any, rec: ClassRecommendation, base: Any) -> str | None:
        """The nearest change measured to qualify in the tool: another of its schedules at the same steps,
        else one step more; None if neither does."""
        tries = [(s, rec.steps) for s in TOOLS[tool].parity_schedules if s != schedule] + [(schedule, rec.steps + 1)]
        for s, steps in tries:
            got = self.of(tool, sampler, s, steps, rec.guidance)
            if got is not None and self.judge(got[1], base)[0] == "qualifies":
                return f"schedule {s}" if steps == rec.steps else f"{steps} steps (one more)"
        return None

    def tool(
        self, tool: str, rec: ClassRecommendation, base: ClassRecommendation | None, in_diffusers: Any
    ) -> dict[str, Any]:
        """The recommendation's verdict in ``tool``, its difference to autotune's diffusers render of it
        (``in_diffusers()``: rendered once per class, when a tool needs it)."""
        from autotune.serving.export import UNET_ONLY, in_tools, inexpressible

        sampler, schedule, missing = in_tools(rec)[tool]
        entry: dict[str, Any] = {"sampler": sampler, "schedule": schedule}
        theirs = in_tools(base)[tool] if base is not None else (None, None, ["no baseline"])
        why = None
        if self.evaluator.family.name != "sd":
            why = UNET_ONLY
        elif missing:
            why = inexpressible(tool)
        elif theirs[2]:
            why = f"the baseline cannot be expressed in {tool}"
        ours = None if why else self.of(tool, sampler, schedule, rec.steps, rec.guidance)
        base_k = None if ours is None or base is None else self.of(tool, *theirs[:2], base.steps, base.guidance)
        if ours is None or base_k is None:
            return {
                **entry,
                "parity": "not checked",
                "why": why or f"{tool} renders it with code other than k-diffusion's",
            }
        verdict, bounds, why_not = self.judge(ours[1], base_k[1])
        entry.update(parity=verdict, bounds=bounds, why_not=why_not)
        diffusers = in_diffusers()
        pairs = {k: zip(v, diffusers.per_image[k], strict=True) for k, v in ours[1].items()}
        entry["delta_to_diffusers"] = {k: statistics.fmean(x - y for x, y in v) for k, v in pairs.items()}
        if self.evaluator.lpips is not None:
            entry["image_lpips_to_diffusers"] = float(self.evaluator.lpips(ours[0], diffusers.images).mean())
        if verdict == "fails":
            entry["change"] = self.change(tool, sampler, schedule, rec, base_k[1])
        return entry


def check(cfg: StudyConfig, recs: Recommendations, seeds: Sequence[int] = SEEDS, prompts: int = PROMPTS,
          device: str | None = None) -> dict[str, Any]:  # fmt: skip
    """Every class's recommendation in each tool against the tool's baseline; written to ``parity.json``."""
    from autotune.files import atomic_write

    modules = k_diffusion()
    out: dict[str, Any] = {"study": cfg.name, "seeds": list(seeds), "k_diffusion": None, "classes": {}}
    if modules is None:
        return {**out, "why": NOT_INSTALLED}
    from importlib.metadata import version

    from autotune.model.evaluate import Evaluator
    from autotune.model.pipeline import resolve_config

    out["k_diffusion"] = version("k-diffusion")
    resolved = resolve_config(cfg)
    print(f"autotune: export --check: loading {cfg.model.id} and the metrics' models", file=sys.stderr)
    evaluator = Evaluator(resolved, cfg.default_storage, device)
    base = recs.get(DEFAULT_CLASS)
    for c, rec in recs.items():
        if c == DEFAULT_CLASS or c not in resolved.classes:
            continue
        print(f"autotune: export --check: {c}: rendering as diffusers, {' and '.join(TOOLS)} do", file=sys.stderr)
        one = _Class(evaluator, resolved, recs, c, modules, prompts, seeds)
        chosen = rec.settings()
        diffusers = functools.cache(functools.partial(evaluator.evaluate, chosen, one.prompts, one.seeds, timed=False))
        row = {"setting": rec.setting, "prompts": len(one.prompts), "images": len(one.prompts) * len(one.seeds)}
        out["classes"][c] = {**row, **{tool: one.tool(tool, rec, base, diffusers) for tool in TOOLS}}
    where = Path(recs.path).parent if recs.path else cfg.output_dir
    atomic_write(where / "parity.json", json.dumps(out, indent=2) + "\n")
    return out


def check_file(path: Path, recs: Recommendations, device: str | None = None) -> str:
    """``autotune export STUDY.toml --check``: run the check, write ``parity.json``; the lines to print."""
    from autotune.config import ConfigError, load_config

    if path.suffix != ".toml":
        raise ConfigError(f"{path}: --check renders the model: pass the study file (studies/NAME.toml)")
    return format_parity(check(load_config(path), recs, device=device))


def format_parity(result: dict[str, Any]) -> str:
    """One line per class and tool: the tool's names, the verdict, the difference to the diffusers render."""
    if result.get("why"):
        return f"parity: not checked: {result['why']}"
    lines = []
    for c, row in result["classes"].items():
        for tool in TOOLS:
            e = row[tool]
            head = f"parity {c} {tool} ({e['sampler']}, {e['schedule']}, {row['images']} images): {e['parity']}"
            if e["parity"] == "not checked":
                lines.append(f"{head}: {e['why']}")
                continue
            deltas = [f"Δ{m} {v:+.3g}" for m, v in e["delta_to_diffusers"].items()]
            if "image_lpips_to_diffusers" in e:
                deltas.append(f"LPIPS between the two images {e['image_lpips_to_diffusers']:.3g}")
            why = f" ({'; '.join(e['why_not'])})" if e["why_not"] else ""
            change = f"; measured to qualify: {e['change']}" if e.get("change") else ""
            lines.append(f"{head}{why}; against autotune's diffusers render: {', '.join(deltas)}{change}")
    return "\n".join(lines)
