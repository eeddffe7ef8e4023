"""The apihelper client sample and the generated ``apihelper.v1`` stubs it uses."""
