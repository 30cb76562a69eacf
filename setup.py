"""Build the machine's atomic core, the only C in the project (see smp/machine/_atomic.c),
and ship the load scripts and machine/kernel profiles inside the package.

``workloads/`` and ``shared/`` at the top of the source tree stay the one source; a
built package (wheel or a plain ``pip install .``) carries copies of them in
``smp/data/``, where ``smp`` finds them after ``./workloads`` and ``./shared`` of the
current directory (smp.config.search_dirs).
"""
import shutil
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
DATA = [("workloads", ("*.toml", "README.md")), ("shared/machines", ("*.toml",)),
        ("shared/kernels", ("*.toml",))]


class build_py_with_data(build_py):  # noqa: N801 - setuptools' naming
    """build_py, plus the shipped load scripts and profiles as smp/data/."""

    def run(self):
        super().run()
        for rel, patterns in DATA:
            dst = Path(self.build_lib) / "smp" / "data" / rel
            dst.mkdir(parents=True, exist_ok=True)
            for pattern in patterns:
                for f in sorted((HERE / rel).glob(pattern)):
                    shutil.copy2(f, dst / f.name)


setup(
    cmdclass={"build_py": build_py_with_data},
    ext_modules=[
        Extension(
            "smp.machine._atomic",
            sources=["smp/machine/_atomic.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        )
    ],
)
