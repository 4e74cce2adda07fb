"""Toy generators small enough to study exactly: a CPWL surface generator and a 2-D DDPM."""
