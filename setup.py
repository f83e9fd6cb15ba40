from setuptools import find_packages, setup

setup(
    name="mgiad-kernels",
    version="0.1.0",
    description="Fused Triton kernels and models for multigrid CNNs (MGiaD, MgNet, MGIC, Poly-MgNet)",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mgiad_kernels", "mgiad_kernels.*", "mgiad", "mgiad.*"]),
    package_data={"mgiad_kernels": ["runtime/fast_launch.c"]},  # built on first use (runtime/fast_launch.py)
    python_requires=">=3.10",
    entry_points={"console_scripts": ["mgiad=mgiad.cli:main"]},
    # the default `mgiad train` (digits) needs scikit-learn; matplotlib (curves.png), tqdm (progress bar) and
    # torchvision (--autoaugment) are optional: without them the CLI says what it skipped or needs
    install_requires=["torch>=2.4", "numpy>=1.24", "scikit-learn>=1.3"],
    extras_require={
        "triton": ["triton>=3.0"],
        "train": ["torchvision>=0.19", "scikit-learn>=1.3", "matplotlib>=3.7", "tqdm>=4.60"],
        "dev": ["pytest>=7", "pytest-benchmark>=4"],
    },
)
