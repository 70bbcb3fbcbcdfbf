"""The tiny grid the tests share: 2 temperatures x 2 densities of MNIST-1D on a half-width
1-D CNN, seconds per cell on one CPU thread."""

TINY = {
    "experiment": "tiny",
    "knob": "epochs",
    "temperatures": [1, 3],
    "densities": [0.2, 0.6],
    "data": {"name": "mnist1d", "train_subset": 300},
    "model": {"name": "cnn1d", "width": 0.5},
    "dense": {"epochs": 3, "batch_size": 32},
    "finetune": {"epochs": 1, "batch_size": 32, "seeds": [0, 1], "last_epochs": 1},
    "measure": {"lmc_points": 3, "cka_examples": 100},
    "runtime": {"threads": 1},
}
