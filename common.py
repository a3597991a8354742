"""What every train_*.py script repeats: errors, seeding, device, DDP, atomic files, run folders, metrics."""


class InputError(Exception):
    """Bad user input (a file, a flag, a dataset). The message is one line that names the file and the
    problem; scripts print it without a traceback and exit non-zero."""
