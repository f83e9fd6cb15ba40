"""How a launch is made, for any op: launch sites and their warm functions (``launch_sites``), the fast C
launcher (``fast_launch``), shared device buffers (``buffers``), how custom ops' implementations are called
(``device_calls``), Triton's availability and the interpreter (``triton_support``), and the in-kernel split
reduction every op's statistics use (``split_reduction``)."""
