package main

import (
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// fakeGPUs makes a temp dir of emulated GPUs without root: symlinks to /dev/null stand in for
// mknod'ed nodes, being character devices once followed.
func fakeGPUs(t *testing.T, names ...string) string {
	t.Helper()
	if fi, err := os.Stat("/dev/null"); err != nil || fi.Mode().Type() != fs.ModeDevice|fs.ModeCharDevice {
		t.Skip("/dev/null is not a character device here")
	}
	dir := t.TempDir()
	for _, name := range names {
		if err := os.Symlink("/dev/null", filepath.Join(dir, name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func ids(ds []device) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.id)
	}
	return out
}

func TestDiscover(t *testing.T) {
	dir := fakeGPUs(t, "nvidia10", "nvidia2", "nvidiactl", "nvidia3x")
	// A regular file named like a GPU is what a failed mknod leaves: no device.
	if err := os.WriteFile(filepath.Join(dir, "nvidia1"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	found, err := discover(filepath.Join(dir, "nvidia*"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := ids(found), []string{"nvidia2", "nvidia10"}; !slices.Equal(got, want) {
		t.Fatalf("discovered %v, want %v", got, want)
	}
	if found[1].index != 10 || found[1].path != filepath.Join(dir, "nvidia10") {
		t.Fatalf("nvidia10 = %+v", found[1])
	}
}

func TestAllocate(t *testing.T) {
	dir := fakeGPUs(t, "nvidia0", "nvidia3")
	p := newPlugin(filepath.Join(dir, "nvidia[0-9]*"))
	if err := p.rescan(); err != nil {
		t.Fatal(err)
	}
	resp, err := p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"nvidia3", "nvidia0"}},
		{DevicesIds: []string{"nvidia0"}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(resp.ContainerResponses); n != 2 {
		t.Fatalf("%d container responses, want 2", n)
	}
	c := resp.ContainerResponses[0]
	if env := c.Envs["NVIDIA_VISIBLE_DEVICES"]; env != "3,0" {
		t.Errorf("NVIDIA_VISIBLE_DEVICES = %q, want 3,0", env)
	}
	if len(c.Devices) != 2 {
		t.Fatalf("device specs %v, want 2", c.Devices)
	}
	spec := c.Devices[0]
	if spec.ContainerPath != "/dev/nvidia3" || spec.HostPath != filepath.Join(dir, "nvidia3") || spec.Permissions != "rw" {
		t.Errorf("spec = %v", spec)
	}
	if env := resp.ContainerResponses[1].Envs["NVIDIA_VISIBLE_DEVICES"]; env != "0" {
		t.Errorf("second container NVIDIA_VISIBLE_DEVICES = %q, want 0", env)
	}

	_, err = p.Allocate(context.Background(), &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"nvidia0", "nvidia7"}},
	}})
	if err == nil || !strings.Contains(err.Error(), "nvidia7") {
		t.Fatalf("unknown device: err = %v, want one naming nvidia7", err)
	}
}

type fakeKubelet struct {
	pluginapi.UnimplementedRegistrationServer
	reqs chan *pluginapi.RegisterRequest
}

func (k *fakeKubelet) Register(_ context.Context, r *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	k.reqs <- r
	return &pluginapi.Empty{}, nil
}

func startKubelet(t *testing.T, sock string, reqs chan *pluginapi.RegisterRequest) *grpc.Server {
	t.Helper()
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pluginapi.RegisterRegistrationServer(srv, &fakeKubelet{reqs: reqs})
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return srv
}

func waitRegister(t *testing.T, reqs chan *pluginapi.RegisterRequest) {
	t.Helper()
	select {
	case r := <-reqs:
		if r.ResourceName != "nvidia.com/gpu" || r.Endpoint != socketName || r.Version != pluginapi.Version {
			t.Fatalf("register request %v", r)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("plugin did not register")
	}
}

func TestRoundTrip(t *testing.T) {
	devDir := fakeGPUs(t, "nvidia0", "nvidia3")
	sockDir := t.TempDir()
	kubeletSock := filepath.Join(sockDir, "kubelet.sock")
	reqs := make(chan *pluginapi.RegisterRequest, 4)
	kubelet := startKubelet(t, kubeletSock, reqs)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, config{
			devices: filepath.Join(devDir, "nvidia[0-9]*"), socketDir: sockDir, resourceName: "nvidia.com/gpu",
			rescanInterval: 20 * time.Millisecond, watchInterval: 20 * time.Millisecond,
		})
	}()
	waitRegister(t, reqs)

	conn, err := grpc.NewClient("unix:"+filepath.Join(sockDir, socketName), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := pluginapi.NewDevicePluginClient(conn)
	stream, err := client.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	expect := func(want ...string) {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, d := range resp.Devices {
			got = append(got, d.ID+"="+d.Health)
		}
		if !slices.Equal(got, want) {
			t.Fatalf("ListAndWatch sent %v, want %v", got, want)
		}
	}
	expect("nvidia0=Healthy", "nvidia3=Healthy")

	resp, err := client.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"nvidia3"}}}})
	if err != nil {
		t.Fatal(err)
	}
	if c := resp.ContainerResponses[0]; c.Envs["NVIDIA_VISIBLE_DEVICES"] != "3" || c.Devices[0].ContainerPath != "/dev/nvidia3" {
		t.Fatalf("allocate response %v", c)
	}

	// A vanished node turns unhealthy on the next rescan.
	if err := os.Remove(filepath.Join(devDir, "nvidia3")); err != nil {
		t.Fatal(err)
	}
	expect("nvidia0=Healthy", "nvidia3=Unhealthy")

	// A restarted kubelet (new kubelet.sock) gets a new registration.
	kubelet.Stop()
	_ = os.Remove(kubeletSock)
	startKubelet(t, kubeletSock, reqs)
	waitRegister(t, reqs)

	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(sockDir, socketName)); !os.IsNotExist(err) {
		t.Fatalf("plugin socket left behind: %v", err)
	}
}
