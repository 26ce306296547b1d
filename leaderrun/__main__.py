"""`python -m leaderrun` is the same as the `leaderrun` command."""

from leaderrun.cli import main

if __name__ == "__main__":
    main()
