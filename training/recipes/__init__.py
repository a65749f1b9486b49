"""The report's training stages (Table 4) as recipe files: ``<name>.yaml`` next to this module, each a
``TrainConfig`` overlay — model, steps, global batch, learning rate, weight decay, resolution
probabilities, task mix, NABLA on/off. ``TrainConfig.load(config, recipe=name)`` starts from the recipe
and lets the config file (and flags) override it; ``curation train --recipe video-lite-mr-5s``."""

from __future__ import annotations

from pathlib import Path

RECIPES_DIR = Path(__file__).resolve().parent


class UnknownRecipe(ValueError):
    pass


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str) -> dict:
    """The settings of recipe ``name`` (a name from ``recipe_names()``, or a path to a YAML file)."""
    import yaml

    path = Path(name) if name.endswith((".yaml", ".yml")) else RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise UnknownRecipe(f"unknown recipe {name!r}; choices: {', '.join(recipe_names())}")
    return yaml.safe_load(path.read_text()) or {}
