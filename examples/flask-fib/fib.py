def fib(number):
    """Returns the Fibonacci sequence, starting 0, 1, until an element reaches number."""
    sequence = [0, 1]
    while sequence[-1] < number:
        sequence.append(sequence[-2] + sequence[-1])
    return sequence
