"""Tools run by hand around the project, neither library nor benchmark:
accelerator_kit.py, the resumable job queue for a borrowed GPU/TPU box, and
carry.py, which moves its folder between machines in parts. A package (not a
bare folder) so that `from tools import carry` cannot pick up another `tools`
on sys.path."""
