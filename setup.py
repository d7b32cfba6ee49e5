"""espnet-compress: compress self-supervised speech models inside ESPnet."""
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

# The start-up hook (espnet_compress_autoload.py): this .pth file, installed at the top of
# site-packages, makes stock ESPnet and s3prl find the plugin (ESPNET_COMPRESS_AUTOLOAD=0: off).
# Python's site module runs its one line at every interpreter start.
HOOK_PTH = "espnet_compress_autoload.pth"
HOOK_LINE = "import espnet_compress_autoload\n"


def _write(path, text):
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_hook(command, target):
    command.mkpath(os.path.dirname(target))
    command.execute(_write, (target, HOOK_LINE), f"writing {target}")


class BuildPyWithHook(build_py):
    """Also put the hook's .pth file at the root of the build (so of the wheel). An editable
    wheel (PEP 660) keeps no build output, so there the file goes straight into it."""

    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            target_dir = self.get_finalized_command("install").install_lib  # the editable wheel's root
        else:
            target_dir = self.build_lib
        write_hook(self, os.path.join(target_dir, HOOK_PTH))

    def get_outputs(self, *args, **kwargs):
        outputs = super().get_outputs(*args, **kwargs)
        return outputs if getattr(self, "editable_mode", False) else [*outputs, os.path.join(self.build_lib, HOOK_PTH)]


class DevelopWithHook(develop):
    """Legacy editable installs (``setup.py develop``): the .pth file into site-packages too."""

    def run(self):
        super().run()
        target = os.path.join(self.install_dir, HOOK_PTH)
        if self.uninstall:
            if os.path.exists(target):
                os.remove(target)
        else:
            write_hook(self, target)


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
    package_data={"s3prl_upstream": ["configs/**/*.yaml", "configs/**/*.dict"]},
    py_modules=["espnet_compress_autoload"],
    cmdclass={"build_py": BuildPyWithHook, "develop": DevelopWithHook},
    python_requires=">=3.10",
    install_requires=[
        "torch==2.11.0",
        "torchaudio==2.11.0",
        "torchcodec>=0.11,<0.12",
        "espnet==202511",
        "espnet-s3prl==2026.5.14",
        "sentencepiece==0.2.0",
        # ESPnet's text cleaner imports inflect at start-up; inflect 7 instruments its functions
        # with typeguard when imported (2-3 s of every ESPnet command), 5.6 takes 10 ms, same text
        "inflect>=5.6,<6",
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
        "test": ["pytest", "pytest-timeout", "pytest-xdist", "transformers>=5,<6"],
    },
    entry_points={
        "console_scripts": [
            "espnet-compress-import=espnet_plugin.bin.import_model:main",
        ],
    },
)
