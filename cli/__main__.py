from mha.cli.app import main

main()
