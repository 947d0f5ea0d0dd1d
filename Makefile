# The original gpush targets, each a one-liner over cargo or docker.
.PHONY: build run test dockerBuild dockerRun

build:
	cargo build --release --locked --bins

run:
	cargo run --release -p gpush-edge -- --standalone

test:
	.ci/run

dockerBuild:
	docker build -f deploy/Dockerfile -t gpush .

dockerRun:
	docker run --rm -e GPUSH_API_KEY -e GPUSH_JWT_SECRET -p 9992:9992 -p 10068:10068 -p 10067:10067 gpush
