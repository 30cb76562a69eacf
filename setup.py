"""Build the machine's atomic core, the only C in the project (see smp/machine/_atomic.c)."""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "smp.machine._atomic",
            sources=["smp/machine/_atomic.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        )
    ]
)
