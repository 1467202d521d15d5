from mha.cli.app import main

if __name__ == "__main__":  # not when multiprocessing imports it (spawn), as serve's process does
    main()
