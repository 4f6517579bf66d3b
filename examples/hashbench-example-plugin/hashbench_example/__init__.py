"""Example FGHashBench method plugin (see ``hashbench_example.dlbhc``)."""
