from apihelper_client.cli import main

main()
