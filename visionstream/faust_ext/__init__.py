"""What patches or extends Faust's internals, kept together and tested against Faust itself."""
