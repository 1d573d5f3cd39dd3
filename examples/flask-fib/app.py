import json

from flask import Flask, Response

from fib import fib

app = Flask(__name__)


@app.route('/<int:number>')
def fibonacci(number):
    return Response(json.dumps(fib(number)), mimetype='application/json')


if __name__ == '__main__':
    app.run(host='0.0.0.0', port=8000)
