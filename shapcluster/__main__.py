from shapcluster.cli import main

main()
