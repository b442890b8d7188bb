"""`python -m streams`: run one streams worker with settings from the environment."""

from streams.cli import run

if __name__ == "__main__":
    run()
