from apihelper.client.cli import main

main()
