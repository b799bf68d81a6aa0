"""Packaging beside pyproject.toml: the plugin's packages, plus the recipes (configs/pretrain) installed as
`mert_fairseq/recipes`, so an installed package finds them (mert_fairseq/common/recipes.py)."""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["mert_fairseq", "mert_fairseq.*"]) + ["mert_fairseq.recipes"],
    package_dir={"mert_fairseq.recipes": "configs/pretrain"},
    package_data={"mert_fairseq.recipes": ["*.yaml", "hydra/launcher/*.yaml"]},
)
