// Command gpu-device-plugin advertises the emulated NVIDIA GPUs of a local test-site host to the
// kubelet. Those GPUs are bare character nodes (/dev/nvidiaN, major 195, made with mknod; Slurm's
// gres uses the same ones), so NVIDIA's own plugin, which asks NVML about real hardware, cannot
// serve them. This one only looks at the nodes and hands them to containers.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"maps"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// version is stamped at build time: -ldflags '-X main.version=...'.
var version = "dev"

const socketName = "aifactory-emulated-gpu.sock"

type config struct {
	devices, socketDir, resourceName string
	rescanInterval, watchInterval    time.Duration
}

func main() {
	var cfg config
	flag.StringVar(&cfg.devices, "devices", "/dev/nvidia[0-9]*", "glob of the emulated GPU device nodes")
	flag.StringVar(&cfg.socketDir, "socket-dir", pluginapi.DevicePluginPath, "the kubelet's device-plugin directory")
	flag.StringVar(&cfg.resourceName, "resource-name", "nvidia.com/gpu", "extended resource to advertise")
	flag.DurationVar(&cfg.rescanInterval, "rescan-interval", 10*time.Second, "how often to rescan the device nodes")
	showVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *showVersion {
		fmt.Println("gpu-device-plugin", version)
		return
	}
	cfg.watchInterval = 2 * time.Second

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		log.Fatal(err)
	}
}

// device is one emulated GPU; ID is nvidiaN, the node's name.
type device struct {
	id, path string
	index    int
	healthy  bool
}

// discover returns the character devices matching pattern whose name is nvidia + digits, in
// numeric order. Anything else the glob catches (nvidiactl, a regular file left where mknod was
// not allowed) is no GPU.
func discover(pattern string) ([]device, error) {
	paths, err := filepath.Glob(pattern)
	if err != nil {
		return nil, err
	}
	var found []device
	for _, path := range paths {
		id := filepath.Base(path)
		n, ok := index(id)
		if !ok {
			continue
		}
		// Stat, not Lstat: a symlink to a device node serves as well as the node.
		if fi, err := os.Stat(path); err == nil && fi.Mode().Type() == fs.ModeDevice|fs.ModeCharDevice {
			found = append(found, device{id: id, path: path, index: n, healthy: true})
		}
	}
	slices.SortFunc(found, byIndex)
	return found, nil
}

func byIndex(a, b device) int { return cmp.Compare(a.index, b.index) }

// index returns N of a name nvidiaN.
func index(name string) (int, bool) {
	digits, ok := strings.CutPrefix(name, "nvidia")
	if !ok || digits == "" || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.Atoi(digits)
	return n, err == nil
}

type plugin struct {
	pluginapi.UnimplementedDevicePluginServer
	pattern string

	mu      sync.Mutex
	devices map[string]device // every device seen since start: one whose node went stays, unhealthy
	changed chan struct{}     // closed and replaced on every change, to wake ListAndWatch streams
}

func newPlugin(pattern string) *plugin {
	return &plugin{pattern: pattern, devices: map[string]device{}, changed: make(chan struct{})}
}

// rescan refreshes the device set and wakes the watchers if anything changed.
func (p *plugin) rescan() error {
	found, err := discover(p.pattern)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	next := map[string]device{}
	for id, d := range p.devices {
		d.healthy = false
		next[id] = d
	}
	for _, d := range found {
		next[d.id] = d
	}
	if !maps.Equal(p.devices, next) {
		p.devices = next
		close(p.changed)
		p.changed = make(chan struct{})
		log.Printf("devices: %s", p.summary())
	}
	return nil
}

// list returns the devices in numeric order; p.mu must be held.
func (p *plugin) list() []*pluginapi.Device {
	ds := slices.SortedFunc(maps.Values(p.devices), byIndex)
	out := make([]*pluginapi.Device, len(ds))
	for i, d := range ds {
		out[i] = &pluginapi.Device{ID: d.id, Health: pluginapi.Healthy}
		if !d.healthy {
			out[i].Health = pluginapi.Unhealthy
		}
	}
	return out
}

func (p *plugin) summary() string {
	var parts []string
	for _, d := range p.list() {
		parts = append(parts, d.ID+"="+d.Health)
	}
	return strings.Join(parts, " ")
}

func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

func (p *plugin) ListAndWatch(_ *pluginapi.Empty, s grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	for {
		p.mu.Lock()
		resp, changed := &pluginapi.ListAndWatchResponse{Devices: p.list()}, p.changed
		p.mu.Unlock()
		if err := s.Send(resp); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-s.Context().Done():
			return nil
		}
	}
}

func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	resp := &pluginapi.AllocateResponse{}
	for _, creq := range req.ContainerRequests {
		cresp := &pluginapi.ContainerAllocateResponse{}
		var indices []string
		for _, id := range creq.DevicesIds {
			d, ok := p.devices[id]
			if !ok {
				return nil, status.Errorf(codes.InvalidArgument, "unknown device %q", id)
			}
			// In the container the node is /dev/nvidiaN wherever --devices found it: CUDA looks there.
			cresp.Devices = append(cresp.Devices, &pluginapi.DeviceSpec{ContainerPath: "/dev/" + id, HostPath: d.path, Permissions: "rw"})
			indices = append(indices, strconv.Itoa(d.index))
		}
		// As NVIDIA's plugin does: the container toolkit and CUDA images read this.
		cresp.Envs = map[string]string{"NVIDIA_VISIBLE_DEVICES": strings.Join(indices, ",")}
		resp.ContainerResponses = append(resp.ContainerResponses, cresp)
	}
	return resp, nil
}

func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}

// run serves and registers the plugin until ctx ends. A restarted kubelet forgets its plugins and
// deletes their sockets, and says so only by a new kubelet.sock: so run polls that socket's identity
// (and its own socket) and starts over when either changes.
func run(ctx context.Context, cfg config) error {
	p := newPlugin(cfg.devices)
	if err := p.rescan(); err != nil {
		return err
	}
	sock := filepath.Join(cfg.socketDir, socketName)
	kubeletSock := filepath.Join(cfg.socketDir, filepath.Base(pluginapi.KubeletSocket))
	rescan, watch := time.NewTicker(cfg.rescanInterval), time.NewTicker(cfg.watchInterval)
	defer rescan.Stop()
	defer watch.Stop()
	for {
		srv, registered, err := serve(p, sock, kubeletSock, cfg.resourceName)
		if err != nil {
			log.Printf("not registered: %v", err)
		}
		for restart := false; !restart; {
			select {
			case <-ctx.Done():
				shutdown(srv, sock)
				return nil
			case <-rescan.C:
				if err := p.rescan(); err != nil {
					log.Printf("rescan: %v", err)
				}
			case <-watch.C:
				k := identify(kubeletSock)
				restart = k != (fileID{}) && (err != nil || k != registered || identify(sock) == fileID{})
			}
		}
		log.Printf("re-registering: the kubelet at %s restarted or had refused us", kubeletSock)
		shutdown(srv, sock)
	}
}

// serve starts the gRPC server on sock and registers it with the kubelet, returning the identity of
// the kubelet.sock it registered on.
func serve(p *plugin, sock, kubeletSock, resource string) (*grpc.Server, fileID, error) {
	kid := identify(kubeletSock)
	_ = os.Remove(sock) // left by a killed predecessor, it would make Listen fail
	lis, err := net.Listen("unix", sock)
	if err != nil {
		return nil, kid, err
	}
	srv := grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(srv, p)
	go func() { _ = srv.Serve(lis) }()

	conn, err := grpc.NewClient("unix:"+kubeletSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return srv, kid, err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(sock),
		ResourceName: resource,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	if err == nil {
		log.Printf("registered %s with the kubelet at %s, serving on %s", resource, kubeletSock, sock)
	}
	return srv, kid, err
}

func shutdown(srv *grpc.Server, sock string) {
	if srv != nil {
		srv.Stop()
	}
	_ = os.Remove(sock)
}

// fileID tells a re-created socket from the old one. The inode alone does not: a file removed
// and made again at once often gets the same inode number back.
type fileID struct {
	ino   uint64
	ctime syscall.Timespec
}

// identify returns the zero fileID when path does not exist.
func identify(path string) fileID {
	var st syscall.Stat_t
	if syscall.Stat(path, &st) != nil {
		return fileID{}
	}
	return fileID{st.Ino, st.Ctim}
}
