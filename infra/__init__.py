"""Infrastructure of oncechat: the CloudFormation template and the local cloud."""
