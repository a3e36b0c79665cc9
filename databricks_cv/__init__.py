__version__ = "0.0.1"

# OpenMP threads that spin while they wait make PyTorch on the CPU up to 40x slower as soon as another process
# wants a core (a second notebook, a DataLoader worker, a test runner): measured 15 s/step against 0.4 s/step
# for the quickstart model on 2 busy cores. Passive waiting costs little when the machine is idle. Only a default:
# it takes effect when set before torch starts, and a value you set yourself wins.
import os as _os
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
