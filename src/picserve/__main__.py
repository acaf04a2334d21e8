from picserve.cli import main

main()
