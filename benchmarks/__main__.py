"""`python -m benchmarks [--only NAME,...]`: run the benchmark scenarios and write the results."""

from benchmarks.run import main

if __name__ == "__main__":
    main()
