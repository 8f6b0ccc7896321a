"""Deployed federated learning on Flower's deployment engine (SuperLink, SuperNodes).

The server and every client are separate programs that may run on different machines:
certs.py makes the TLS material and the SuperNodes' key pairs, processes.py starts and stops
Flower's SuperLink and SuperNodes, apps/ holds the Flower app (a ServerApp that runs
distlab's federated round loop with the `flower` executor, a ClientApp that trains with
distlab's client training), and local.py runs a whole federation on this machine.
"""

# What a deployed run starts from where the flags say nothing: FedAvg over three clients
# when `distlab deploy local` starts the federation itself.
DEPLOY_STRATEGY = "fedavg"
DEPLOY_LOCAL_CLIENTS = 3
