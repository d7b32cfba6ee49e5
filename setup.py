"""espnet-compress: compress self-supervised speech models inside ESPnet."""
from setuptools import find_packages, setup

setup(
    name="espnet-compress",
    version="0.1.0",
    description=(
        "Joint distillation and structured pruning (DPHuBERT) of HuBERT / WavLM / "
        "wav2vec 2.0 as an ESPnet plugin, with s3prl upstream registration."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["espnet_plugin", "espnet_plugin.*", "s3prl_upstream", "s3prl_upstream.*"]),
    package_data={"espnet_plugin": ["conf/*.yaml"], "s3prl_upstream": ["configs/**/*.yaml", "configs/**/*.dict"]},
    python_requires=">=3.10",
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "torchcodec>=0.11,<0.12",
        "espnet==202511",
        "espnet-s3prl==2026.5.14",
        "sentencepiece==0.2.0",
        "safetensors",
        "pyyaml",
        "tqdm",
        "matplotlib",
        "tensorboardX",  # s3prl's downstream runner imports it
        "pandas",  # s3prl's datasets and problem API
        "pystoi",  # espnet2.bin.enh_scoring: STOI / ESTOI
        "mir_eval",  # espnet2.bin.enh_scoring: SDR
        "pesq",  # espnet2.bin.enh_scoring --use_pesq (builds with the system C compiler)
        "onnx",  # ONNX export (espnet_plugin.deploy)
        "onnxruntime",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "transformers>=5,<6"],
    },
    entry_points={
        "console_scripts": [
            "espnet-compress-import=espnet_plugin.bin.import_model:main",
        ],
    },
)
